"""Training loop: determinism, resume bit-identity, atomic checkpoints, NaN guard, accumulation, EMA."""

import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from leap_toys import MLPVelocity, brightness_reward, sigmoid_decoder

from leapalign.checkpoint import CheckpointError, atomic_save, find_latest, safe_load
from leapalign.config import MethodConfig, OptimConfig, TrainConfig
from leapalign.methods import compute_loss
from leapalign.sigmas import flow_sigmas
from leapalign.train import PromptOrder, train

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 6
PROMPTS = [f"prompt {i}" for i in range(5)]


def make_world(dropout=0.1, method=None):
    model = MLPVelocity(DIM, dropout=dropout, seed=0)
    method = method or MethodConfig(hinge_lambda=1.0)
    sigmas = flow_sigmas(6, shift=2.0)

    def loss_fn(batch):
        # exercise every RNG the checkpoint restores: torch (dropout), python random, numpy
        cfg = MethodConfig(**{**method.__dict__, "hinge_lambda": 1.0 + 0.01 * random.random() + 0.01 * np.random.rand()})
        return compute_loss(cfg, model, sigmoid_decoder, brightness_reward, batch.noise((DIM,)), sigmas,
                            batch.prompts, batch.generator())

    return model, dict(model.named_parameters()), loss_fn


def cfg(steps, tmp=None, **kw):
    return TrainConfig(steps=steps, batch_size=2, seed=3, optim=OptimConfig(lr=1e-2), checkpoint_dir=tmp and str(tmp),
                       **kw)


def seed_all():
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)


def test_resume_is_bit_identical(tmp_path):
    seed_all()
    _, params, loss_fn = make_world()
    straight = train(params, loss_fn, PROMPTS, cfg(6, grad_accum=2))
    straight_weights = {k: v.detach().clone() for k, v in params.items()}

    seed_all()
    _, params, loss_fn = make_world()
    first = train(params, loss_fn, PROMPTS, cfg(3, tmp_path, checkpoint_every=3, grad_accum=2))
    assert first.checkpoint.name == "checkpoint-00000003.pt"
    torch.manual_seed(999)
    random.seed(999)
    np.random.seed(999)  # state after save must not matter: resume restores it
    _, params, loss_fn = make_world()  # fresh weights: resume restores them
    second = train(params, loss_fn, PROMPTS, cfg(6, tmp_path, checkpoint_every=3, grad_accum=2), resume=tmp_path)
    assert second.step == 6
    for name, value in straight_weights.items():
        assert torch.equal(params[name].detach(), value), name
    for name in straight.ema:
        assert torch.equal(straight.ema[name], second.ema[name])
    assert [h["loss"] for h in straight.history[3:]] == [h["loss"] for h in second.history]


def test_training_changes_only_given_params_and_reports_progress():
    model, params, loss_fn = make_world(dropout=0.0)
    frozen = model.net[0].bias
    del params["net.0.bias"]
    frozen.requires_grad_(False)
    before = frozen.clone()
    seen = []
    result = train(params, loss_fn, PROMPTS, cfg(3), callback=lambda step, m: seen.append((step, m["skipped"])))
    assert seen == [(1, False), (2, False), (3, False)]
    assert torch.equal(frozen, before)
    assert all(np.isfinite(h["grad_norm"]) for h in result.history)


def test_should_stop_ends_early_and_checkpoints(tmp_path):
    _, params, loss_fn = make_world(dropout=0.0)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    result = train(params, loss_fn, PROMPTS, cfg(10, tmp_path, should_stop=stop))
    assert result.stopped and result.step == 2
    assert find_latest(tmp_path).name == "checkpoint-00000002.pt"


def test_nan_guard_skips_the_update():
    _, params, loss_fn = make_world(dropout=0.0)

    def poisoned(batch):
        result = loss_fn(batch)
        if batch.step == 1:
            result.loss = result.loss * float("nan")
        return result

    snapshots = []
    train(params, poisoned, PROMPTS, cfg(3), callback=lambda s, m: snapshots.append(
        (m["skipped"], {k: v.detach().clone() for k, v in params.items()})))
    assert [s for s, _ in snapshots] == [False, True, False]
    for name in params:
        assert torch.equal(snapshots[0][1][name], snapshots[1][1][name])
        assert torch.isfinite(snapshots[2][1][name]).all()
        assert not torch.equal(snapshots[1][1][name], snapshots[2][1][name])


def test_gradient_accumulation_equals_one_big_batch():
    method = MethodConfig(hinge_lambda=1.0, k=1, j=4)  # a fixed pair: micro-batches then differ only in noise
    grads = {}
    for batch_size, accum in ((4, 1), (2, 2)):
        model, params, loss_fn = make_world(dropout=0.0, method=method)
        config = TrainConfig(steps=1, batch_size=batch_size, grad_accum=accum, seed=3,
                             optim=OptimConfig(lr=1e-2, grad_clip=None, ema_decay=None))
        before = {k: v.detach().clone() for k, v in params.items()}
        train(params, loss_fn, [f"p{i}" for i in range(8)], config)
        grads[accum] = {k: params[k].detach() - before[k] for k in params}
    for name in grads[1]:
        assert torch.allclose(grads[1][name], grads[2][name], atol=1e-7), name


def test_loss_fn_that_runs_backward_itself_trains_identically():
    """``backward_done``: a loss_fn may run ``(loss * batch.grad_scale).backward()`` itself (ComfyUI's
    velocity only exists inside a sampler call); with accumulation the result is the loop's own."""
    method = MethodConfig(hinge_lambda=1.0, k=1, j=4)
    final = {}
    for own_backward in (False, True):
        model, params, loss_fn = make_world(dropout=0.0, method=method)

        def wrapped(batch, loss_fn=loss_fn, own_backward=own_backward):
            result = loss_fn(batch)
            if own_backward:
                (result.loss * batch.grad_scale).backward()
                result.loss, result.backward_done = result.loss.detach(), True
            return result

        config = TrainConfig(steps=3, batch_size=2, grad_accum=2, seed=3, optim=OptimConfig(lr=1e-2))
        seed_all()
        train(params, wrapped, PROMPTS, config)
        final[own_backward] = {k: v.detach().clone() for k, v in params.items()}
    for name in final[False]:
        assert torch.equal(final[False][name], final[True][name]), name


def test_prompt_order_is_a_seeded_permutation_per_epoch():
    order = PromptOrder(5, seed=1)
    first, second = order.take(5), order.take(5)
    assert sorted(first) == sorted(second) == list(range(5)) and first != second
    order = PromptOrder(5, seed=1)
    order.take(3)
    state = order.state()
    rest = order.take(4)
    again = PromptOrder(5, seed=1)
    again.restore(**state)
    assert again.take(4) == rest


def test_ema_follows_the_weights():
    _, params, loss_fn = make_world(dropout=0.0)
    start = {k: v.detach().clone() for k, v in params.items()}
    config = cfg(1)
    config.optim.ema_decay = 0.9
    result = train(params, loss_fn, PROMPTS, config)
    for name, p in params.items():
        assert torch.allclose(result.ema[name], 0.9 * start[name] + 0.1 * p.detach(), atol=1e-7)


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "checkpoint-00000001.pt"
    torch.save({"format": "leapalign-train-checkpoint", "evil": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        safe_load(path)
    _, params, loss_fn = make_world(dropout=0.0)
    with pytest.raises(CheckpointError):
        train(params, loss_fn, PROMPTS, cfg(2), resume=path)
    assert not marker.exists()


def test_resume_rejects_other_parameters(tmp_path):
    _, params, loss_fn = make_world(dropout=0.0)
    train(params, loss_fn, PROMPTS, cfg(1, tmp_path))
    other = {"w": torch.nn.Parameter(torch.zeros(3))}
    with pytest.raises(CheckpointError, match="do not match"):
        train(other, lambda b: None, PROMPTS, cfg(2), resume=tmp_path)


KILL_MIDWAY = textwrap.dedent("""
    import os, signal, sys, torch
    from leapalign import checkpoint
    path = sys.argv[1]
    real_save = torch.save

    def save_half_then_die(obj, handle):
        import io
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_half_then_die
    state = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "params": {"w": torch.ones(100000)}}
    checkpoint.atomic_save(state, path)
""")


def test_interrupted_checkpoint_write_leaves_previous_loadable(tmp_path):
    from leapalign import checkpoint

    path = tmp_path / "checkpoint-00000005.pt"
    previous = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "params": {"w": torch.zeros(10)}}
    atomic_save(previous, path)
    proc = subprocess.run([sys.executable, "-c", KILL_MIDWAY, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != path.name]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")   # the half-written temp file
    state = safe_load(path)
    assert torch.equal(state["params"]["w"], torch.zeros(10))
    assert find_latest(tmp_path) == path


class Cancelled(Exception):
    """Stands in for ComfyUI's InterruptProcessingException, raised inside the model."""


def test_cancel_inside_a_step_checkpoints_the_last_boundary_and_resumes_bit_identically(tmp_path):
    seed_all()
    _, params, loss_fn = make_world()
    train(params, loss_fn, PROMPTS, cfg(6, grad_accum=2))
    straight = {k: v.detach().clone() for k, v in params.items()}

    seed_all()
    _, params, loss_fn = make_world()
    cancelled = {"now": False}

    def cancelling(batch):
        if batch.step == 4 and batch.micro == 1:  # half-way through step 5: gradients of micro 0 exist
            cancelled["now"] = True
            raise Cancelled
        return loss_fn(batch)

    with pytest.raises(Cancelled):
        train(params, cancelling, PROMPTS, cfg(6, tmp_path, grad_accum=2, checkpoint_every=3,
                                                 should_stop=lambda: cancelled["now"]))
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["checkpoint-00000003.pt", "checkpoint-00000004.pt"]
    _, params, loss_fn = make_world()
    resumed = train(params, loss_fn, PROMPTS, cfg(6, tmp_path, grad_accum=2, checkpoint_every=3), resume=tmp_path)
    assert resumed.step == 6 and [h["step"] for h in resumed.history] == [5, 6]
    for name, value in straight.items():
        assert torch.equal(params[name].detach(), value), name


def test_resume_applies_and_records_a_changed_learning_rate(tmp_path):
    _, params, loss_fn = make_world(dropout=0.0)
    train(params, loss_fn, PROMPTS, cfg(2, tmp_path, checkpoint_every=2))
    _, params, loss_fn = make_world(dropout=0.0)
    config = TrainConfig(steps=4, batch_size=2, seed=3, optim=OptimConfig(lr=5e-3, weight_decay=0.0),
                         checkpoint_dir=str(tmp_path), checkpoint_every=2)
    result = train(params, loss_fn, PROMPTS, config, resume=tmp_path)
    assert [h["lr"] for h in result.history] == [5e-3, 5e-3]  # applied, not the checkpoint's 1e-2
    assert result.history[0]["settings_changed"] == {"lr": [1e-2, 5e-3], "weight_decay": [1e-4, 0.0], "steps": [2, 4]}
    assert "settings_changed" not in result.history[1]
    assert result.changes == [{"step": 2, "lr": [1e-2, 5e-3], "weight_decay": [1e-4, 0.0], "steps": [2, 4]}]
    assert safe_load(tmp_path / "checkpoint-00000004.pt")["changes"] == result.changes  # kept for later resumes


def test_resume_refuses_a_changed_fixed_setting(tmp_path):
    _, params, loss_fn = make_world(dropout=0.0)
    train(params, loss_fn, PROMPTS, cfg(2, tmp_path), fixed_settings={"method": "leapalign", "rank": 4})
    _, params, loss_fn = make_world(dropout=0.0)
    with pytest.raises(CheckpointError, match=r"fixes settings that this run changes: method \(checkpoint: "
                                              r"'leapalign', now: 'refl'\)"):
        train(params, loss_fn, PROMPTS, cfg(4, tmp_path), resume=tmp_path,
              fixed_settings={"method": "refl", "rank": 4})


def test_unreadable_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    from leapalign.checkpoint import newest_readable

    _, params, loss_fn = make_world(dropout=0.0)
    train(params, loss_fn, PROMPTS, cfg(4, tmp_path, checkpoint_every=2))
    newest = tmp_path / "checkpoint-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated after the fact
    found, warnings = newest_readable(tmp_path)
    assert found == tmp_path / "checkpoint-00000002.pt"
    assert len(warnings) == 1 and str(newest) in warnings[0] and "checkpoint-00000002.pt" in warnings[0]
    _, params, loss_fn = make_world(dropout=0.0)
    with caplog.at_level("WARNING"):
        result = train(params, loss_fn, PROMPTS, cfg(4, tmp_path, checkpoint_every=2), resume=tmp_path)
    assert [h["step"] for h in result.history] == [3, 4] and str(newest) in caplog.text
