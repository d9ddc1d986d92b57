"""Each baseline pinned by what distinguishes it, behind the one compute_loss interface."""

import contextlib

import pytest
import torch
from leap_toys import (
    CountingVelocity,
    LinearReward,
    LinearVelocity,
    MLPVelocity,
    identity_decoder,
    sigmoid_decoder,
)

from leapalign.config import METHOD_NAMES, MethodConfig
from leapalign.methods import METHODS, compute_loss, get_method
from leapalign.methods.refl import late_range
from leapalign.rollout import capture_rollout
from leapalign.sigmas import flow_sigmas

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 6


def run(name, vel, noise, sigmas, reward=None, gen=None, **kw):
    reward = reward or LinearReward(torch.ones(3, 2, 2))
    cfg = MethodConfig(name=name, hinge_lambda=kw.pop("hinge_lambda", 10.0), **kw)
    return compute_loss(cfg, vel, sigmoid_decoder, reward, noise, sigmas, ["p"] * noise.shape[0], gen), reward


def test_registry_covers_every_method_name():
    assert set(METHODS) == set(METHOD_NAMES)
    with pytest.raises(ValueError, match="unknown method"):
        get_method("dpo")
    vel = MLPVelocity(DIM)
    for name in METHOD_NAMES:
        res, _ = run(name, vel, torch.randn(2, DIM), flow_sigmas(8), gen=torch.Generator().manual_seed(0))
        res.loss.backward()
        assert torch.isfinite(res.loss) and res.metrics["method"] == name


def test_refl_scores_the_one_step_prediction_from_a_late_point():
    vel = CountingVelocity(MLPVelocity(DIM))
    noise = torch.randn(3, DIM)
    sigmas = flow_sigmas(12, shift=3.0)
    full = capture_rollout(vel, noise, sigmas)
    assert late_range(25, MethodConfig().refl_late_fraction) == (14, 24)  # released: last 11 of 25
    assert late_range(12, 0.44) == (6, 11) and late_range(12, 0.25) == (9, 11)
    seen = set()
    for seed in range(30):
        vel.calls.clear()
        res, reward = run("refl", vel, noise, sigmas, gen=torch.Generator().manual_seed(seed),
                          refl_late_fraction=0.25)
        a = res.metrics["a"]
        seen.add(a)
        assert len(vel.grad_calls) == 1 and len(vel.calls) == a + 1
        with torch.no_grad():
            prediction = full[a] - sigmas[a] * vel.velocity(full[a], sigmas[a].expand(3))
        assert torch.allclose(reward.seen[0], sigmoid_decoder(prediction), atol=1e-6)
        if a < 11:  # from the last grid point the one-step prediction is the final Euler step itself
            assert (reward.seen[0] - sigmoid_decoder(full.final)).abs().max() > 1e-4
    assert seen == {9, 10, 11}


def test_drtune_never_differentiates_through_network_inputs():
    vel = CountingVelocity(LinearVelocity(DIM))
    noise = torch.randn(2, DIM, dtype=torch.float64)
    sigmas = flow_sigmas(10, dtype=torch.float64)
    reward = LinearReward(torch.ones(DIM, dtype=torch.float64))
    cfg = MethodConfig(name="drtune", drtune_steps=3, drtune_early_stop=0.0, hinge_lambda=1e6)
    res = compute_loss(cfg, vel, identity_decoder, reward, noise, sigmas, ["a", "b"], torch.Generator().manual_seed(1))
    trained = res.metrics["trained_steps"]
    assert len(trained) == 3 and len(set(i % 3 for i in trained)) == 1
    assert all(not c["x_requires_grad"] for c in vel.grad_calls) and len(vel.grad_calls) == 3
    res.loss.backward()
    full = capture_rollout(vel.velocity, noise, sigmas)
    assert torch.equal(reward.seen[0], full.final)   # forward value is the real x_N
    # gradient = sum of direct terms dt_i * dv/dW (no nested Jacobians): dL/dx_N = -1/B per entry
    u = -torch.ones(2, DIM, dtype=torch.float64) / 2
    expected = sum((sigmas[i + 1] - sigmas[i]) * u.T @ full[i] for i in trained)
    assert torch.allclose(vel.velocity.W.grad, expected, rtol=1e-10, atol=1e-12)


def test_drtune_released_defaults_stop_early_and_score_the_prediction():
    cfg = MethodConfig(name="drtune", hinge_lambda=1e6)
    assert (cfg.drtune_steps, cfg.drtune_early_stop) == (3, 0.4)
    vel = CountingVelocity(LinearVelocity(DIM))
    noise = torch.randn(2, DIM, dtype=torch.float64)
    sigmas = flow_sigmas(10, dtype=torch.float64)
    full = capture_rollout(vel.velocity, noise, sigmas)
    stops = set()
    for seed in range(40):
        vel.velocity.zero_grad()
        reward = LinearReward(torch.ones(DIM, dtype=torch.float64))
        res = compute_loss(cfg, vel, identity_decoder, reward, noise, sigmas, ["a", "b"],
                           torch.Generator().manual_seed(seed))
        e, trained = res.metrics["stop"], res.metrics["trained_steps"]
        stops.add(e)
        assert len(trained) == 3 and max(trained) < e and len({b - a for a, b in zip(trained, trained[1:])}) == 1
        with torch.no_grad():
            prediction = full[e] - sigmas[e] * vel.velocity(full[e], sigmas[e].expand(2))
        assert torch.allclose(reward.seen[0], prediction, atol=1e-12)   # reward on x_e's one-step prediction
        res.loss.backward()
        u = -torch.ones(2, DIM, dtype=torch.float64) / 2
        expected = sum((sigmas[i + 1] - sigmas[i]) * u.T @ full[i] for i in trained)
        assert torch.allclose(vel.velocity.W.grad, expected, rtol=1e-10, atol=1e-12)
    assert stops == {6, 7, 8, 9}   # uniform over the last 40 % of the grid points before N


@pytest.mark.parametrize("K", [1, 3])
def test_draft_k_differentiates_exactly_the_last_k_steps(K):
    vel = CountingVelocity(MLPVelocity(DIM))
    noise = torch.randn(2, DIM)
    sigmas = flow_sigmas(8)
    res, reward = run("draft_k", vel, noise, sigmas, draft_k=K, gradient_checkpointing=False)
    grad_calls = vel.grad_calls
    assert len(grad_calls) == K and len(vel.calls) == 8
    assert not grad_calls[0]["x_requires_grad"] and all(c["x_requires_grad"] for c in grad_calls[1:])
    assert [float(c["sigma"][0]) for c in grad_calls] == sigmas[8 - K:8].tolist()
    assert torch.equal(reward.seen[0], sigmoid_decoder(capture_rollout(vel.velocity, noise, sigmas, keep=[]).final))


def test_chain_gradient_checkpointing_is_exact_and_reenters_the_context():
    entered = []
    active = []

    @contextlib.contextmanager
    def context():
        active.append(True)
        entered.append(1)
        try:
            yield
        finally:
            active.pop()

    base = MLPVelocity(DIM)

    def velocity(x, sigma):
        if torch.is_grad_enabled():
            assert active, "velocity ran with grad outside the checkpoint context"
        return base(x, sigma)

    noise = torch.randn(2, DIM)
    grads = {}
    for ckpt in (False, True):
        base.zero_grad()
        entered.clear()
        cfg = MethodConfig(name="full_backprop", hinge_lambda=10.0, gradient_checkpointing=ckpt,
                           checkpoint_context=context)
        compute_loss(cfg, velocity, sigmoid_decoder, LinearReward(1.0), noise, flow_sigmas(5), ["a", "b"]).loss.backward()
        grads[ckpt] = [p.grad.clone() for p in base.parameters()]
        assert len(entered) == (10 if ckpt else 5)   # recomputation runs inside the context again
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))


def test_draft_lv_uses_n_renoised_copies_of_the_final_sample():
    vel = CountingVelocity(MLPVelocity(DIM))
    noise = torch.randn(4, DIM)
    sigmas = flow_sigmas(8, shift=3.0)
    res, reward = run("draft_lv", vel, noise, sigmas, draft_lv_copies=3, gen=torch.Generator().manual_seed(0))
    grad_calls = vel.grad_calls
    assert len(grad_calls) == 1 + 3 and res.metrics["copies"] == 3
    x0 = capture_rollout(vel.velocity, noise, sigmas, keep=[]).final
    t = sigmas[7]
    assert torch.equal(reward.seen[0], sigmoid_decoder(x0))
    eps = []
    for call in grad_calls[1:]:
        assert torch.equal(call["sigma"], t.expand(4)) and call["x_requires_grad"] is False
        eps.append((call["x"] - (1 - t) * x0) / t)
    assert all(e.std().item() == pytest.approx(1.0, abs=0.35) for e in eps)
    assert not torch.allclose(eps[0], eps[1])
    assert len(reward.seen) == 4  # the real last step plus three copies


def test_metrics_carry_diagnostics():
    res, _ = run("leapalign", MLPVelocity(DIM), torch.randn(3, DIM), flow_sigmas(6), gen=torch.Generator().manual_seed(2))
    m = res.metrics
    for key in ("reward", "rewards", "d_j", "d_0", "weights", "k", "j", "sigma_k", "sigma_j", "loss", "hinge_active"):
        assert key in m
    assert len(m["rewards"]) == len(m["d_j"]) == len(m["weights"]) == 3
    assert 0 <= m["k"] < m["j"] <= 5   # released pair sampling: j is never the final point


@pytest.mark.parametrize("leap_steps, calls", [(1, 1), (2, 2), (3, 3)])
def test_one_two_three_step_leaps(leap_steps, calls):
    vel = CountingVelocity(MLPVelocity(DIM))
    noise = torch.randn(2, DIM)
    res, reward = run("leapalign", vel, noise, flow_sigmas(8), gen=torch.Generator().manual_seed(3),
                      leap_steps=leap_steps)
    res.loss.backward()
    assert len(vel.grad_calls) == calls == res.metrics["velocity_evals"]
    final = capture_rollout(vel.velocity, noise, flow_sigmas(8), keep=[]).final
    assert torch.equal(reward.seen[0], sigmoid_decoder(final))   # reward on the real x_0 in every variant
    if leap_steps == 1:
        assert res.metrics["j"] == 8
    if leap_steps == 3:
        assert res.metrics["k"] < res.metrics["j"] < res.metrics["m"] < 8


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_split_capture_then_loss_equals_compute_loss(name):
    from leapalign.methods import capture_for_method, loss_from_rollout

    vel = MLPVelocity(DIM)
    noise = torch.randn(2, DIM)
    sigmas = flow_sigmas(6)
    cfg = MethodConfig(name=name, hinge_lambda=10.0)
    rollout = capture_for_method(cfg, vel, noise, sigmas, torch.Generator().manual_seed(4))
    split = loss_from_rollout(cfg, vel, sigmoid_decoder, LinearReward(1.0), rollout, ["a", "b"])
    whole = compute_loss(cfg, vel, sigmoid_decoder, LinearReward(1.0), noise, sigmas, ["a", "b"],
                         torch.Generator().manual_seed(4))
    assert torch.equal(split.loss, whole.loss)
    if name == "leapalign":
        assert sorted(rollout.latents) == sorted({*rollout.pair, 6})   # only x_k, x_j, x_0 kept
    other = MethodConfig(name="refl" if name != "refl" else "drtune", hinge_lambda=10.0)
    with pytest.raises(ValueError, match="not captured for method"):
        loss_from_rollout(other, vel, sigmoid_decoder, LinearReward(1.0), rollout, ["a", "b"])


def test_bf16_rollout_through_compute_loss():
    model = MLPVelocity(DIM)

    def casting_velocity(x, sigma):   # like ComfyUI's apply_model: inputs cast to the model's dtype
        return model(x.float(), sigma).to(x.dtype)

    vel = CountingVelocity(casting_velocity)
    cfg = MethodConfig(hinge_lambda=10.0, rollout_dtype="bf16", k=0, j=3)
    res = compute_loss(cfg, vel, sigmoid_decoder, LinearReward(1.0), torch.randn(2, DIM), flow_sigmas(5), ["a", "b"])
    res.loss.backward()
    rollout_calls = [c for c in vel.calls if not c["grad"]]
    assert all(c["x"].dtype == torch.bfloat16 for c in rollout_calls)
    assert all(c["x"].dtype == torch.float32 for c in vel.grad_calls)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
