"""The training loop: AdamW on the trainable tensors only, clipping, accumulation, EMA, NaN guard,
data-parallel gradient averaging, and whole-state checkpoint/resume.

Determinism: the prompt order is a seeded permutation per epoch, noise and method randomness are
keyed by ``(seed, step, ...)`` (see :mod:`leapalign.noise`), and resuming restores weights,
optimizer, EMA, every RNG state, the step and the data position, so on CPU ``2N`` straight steps and
``N`` + save + resume + ``N`` give bit-identical weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    atomic_save,
    checkpoint_name,
    prune,
    resolve_resume,
    rng_state,
    safe_load,
    set_rng_state,
)
from .config import TrainConfig
from .distributed import DistContext, resolve_dist
from .ema import EMA
from .noise import seeded_generator
from .prompts import require_prompts, shard_batch
from .types import Batch, LossResult

LossFn = Callable[[Batch], LossResult]
Callback = Callable[[int, dict], None]


class PromptOrder:
    """Prompts in a seeded permutation per epoch; the position is ``(epoch, offset)`` into it."""

    def __init__(self, count: int, seed: int, epoch: int = 0, offset: int = 0):
        if count < 1:
            raise ValueError("the prompt list is empty")
        self.count, self.seed, self.epoch, self.offset = count, seed, epoch, offset
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        return torch.randperm(self.count, generator=seeded_generator("epoch", self.seed, epoch)).tolist()

    def take(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.offset == self.count:
                self.epoch, self.offset = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            grab = min(n - len(out), self.count - self.offset)
            out.extend(self._perm[self.offset:self.offset + grab])
            self.offset += grab
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, epoch: int, offset: int) -> None:
        if not 0 <= offset <= self.count or epoch < 0:
            raise ValueError(f"data position (epoch {epoch}, offset {offset}) is invalid for {self.count} prompts")
        self.epoch, self.offset = epoch, offset
        self._perm = self._permutation(epoch)


@dataclass
class TrainResult:
    """``step`` = optimizer steps completed; ``ema`` = EMA weights (None if disabled)."""

    step: int
    params: dict[str, Tensor]
    ema: dict[str, Tensor] | None
    history: list[dict] = field(default_factory=list)
    stopped: bool = False
    skipped_steps: int = 0
    checkpoint: Path | None = None
    changes: list[dict] = field(default_factory=list)
    """Setting changes made on resume: ``{"step": N, "lr": [old, new], ...}`` (N steps done before)."""


def _check_params(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if not params:
        raise ValueError("train() got no parameters to optimize")
    out = {}
    for name, p in params.items():
        if not isinstance(p, Tensor) or not p.requires_grad or not p.is_leaf:
            raise ValueError(f"parameter {name!r} must be a leaf tensor with requires_grad=True")
        if not p.is_floating_point():
            raise ValueError(f"parameter {name!r} has non-float dtype {p.dtype}")
        out[name] = p
    return out


def _merge_micro(metrics: list[dict]) -> dict:
    """Floats averaged over micro-batches, lists concatenated, anything else from the last one."""
    if len(metrics) == 1:
        return dict(metrics[0])
    out = {}
    for key in metrics[-1]:
        values = [m[key] for m in metrics if key in m]
        if isinstance(values[-1], float):
            out[key] = math.fsum(values) / len(values)
        elif isinstance(values[-1], list):
            out[key] = [x for v in values for x in v]
        else:
            out[key] = values[-1]
    return out


def _grads_finite(params: Sequence[Tensor]) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


def _grad_norm(params: Sequence[Tensor]) -> float:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


CHANGEABLE = ("lr", "weight_decay", "grad_clip", "ema_decay", "steps")
"""Settings a resumed run may change; they apply from the resumed step on and are recorded as changes."""


def train(params: Mapping[str, Tensor], loss_fn: LossFn, prompts: Sequence[str], config: TrainConfig, *,
          callback: Callback | None = None, dist: DistContext | None = None,
          resume: str | Path | None = None, fixed_settings: Mapping | None = None) -> TrainResult:
    """Optimize ``params`` (and only them) on ``loss_fn`` for ``config.steps`` optimizer steps in total.

    Each step draws ``config.grad_accum`` global micro-batches of ``config.batch_size`` prompts; this
    rank calls ``loss_fn`` on its slice. A step whose loss or averaged gradient is non-finite on any
    rank is skipped everywhere (gradients zeroed, weights, optimizer and EMA untouched) and reported as
    ``metrics["skipped"] = True``. ``callback(step, metrics)`` gets the 1-based count of completed
    steps.

    Stopping: ``config.should_stop()`` is polled before each step (agreed over all ranks); a stopped
    run writes a checkpoint (if a folder is set) so it can be resumed. If ``loss_fn`` raises while
    ``should_stop()`` is true (ComfyUI's Cancel interrupts inside the model), the half-done step is
    dropped, the data position and RNG go back to the step boundary, a checkpoint of the last
    completed step is written, and the exception continues.

    Resuming: ``resume`` is a checkpoint file or a folder (newest readable one taken). The checkpoint
    fixes ``fixed_settings`` (method, LoRA shape, seed, prompts, ...: a change is refused) and the
    weights, optimizer moments, EMA, RNG and data position; :data:`CHANGEABLE` settings take the new
    values, and each change is recorded (``result.changes``, and ``settings_changed`` in the first
    metrics record after the resume).
    """
    params = _check_params(params)
    dist = resolve_dist(dist)
    prompts = require_prompts(list(prompts))
    if config.batch_size % dist.world_size:
        raise ValueError(f"batch_size {config.batch_size} does not split evenly over {dist.world_size} ranks")
    plist = list(params.values())
    optim = config.optim
    optimizer = torch.optim.AdamW(plist, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                  weight_decay=optim.weight_decay)
    ema = EMA(params, optim.ema_decay) if optim.ema_decay is not None else None
    order = PromptOrder(len(prompts), config.seed)
    fixed = dict(fixed_settings or {})
    start, changes, changed_now = 0, [], {}
    if resume is not None:
        start, changes, changed_now = _restore(resolve_resume(resume), params, optimizer, ema, order, config,
                                               len(prompts), fixed)

    result = TrainResult(step=start, params=params, ema=None, changes=changes)
    saver = _Saver(params, optimizer, ema, order, config, dist, fixed, changes)
    for step in range(start, config.steps):
        if _stop_requested(config, dist):
            result.stopped = True
            break
        boundary = (order.state(), rng_state())
        try:
            metrics = _one_step(step, params, plist, loss_fn, prompts, order, optimizer, ema, config, dist)
        except BaseException:
            if config.should_stop is None or not config.should_stop():
                raise
            for p in plist:  # Cancel inside the model: back to the boundary, keep what is done
                p.grad = None
            order.restore(**boundary[0])
            set_rng_state(boundary[1])
            if config.checkpoint_dir and result.step > start:
                saver.save(result.step)
            raise
        result.step = step + 1
        result.skipped_steps += int(metrics["skipped"])
        if changed_now and step == start:
            metrics["settings_changed"] = changed_now
        result.history.append(metrics)
        try:
            if callback is not None:
                callback(step + 1, metrics)
        except BaseException:  # a Cancel raised while reporting: this step is complete, keep it
            if config.should_stop is not None and config.should_stop() and config.checkpoint_dir:
                saver.save(result.step)
            raise
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            saver.save(result.step)
    saved_at_end = config.checkpoint_every and result.step % config.checkpoint_every == 0
    if config.checkpoint_dir and result.step > start and not saved_at_end:
        saver.save(result.step)
    result.checkpoint = saver.last
    result.ema = {k: v.clone() for k, v in ema.shadow.items()} if ema is not None else None
    return result


def _stop_requested(config: TrainConfig, dist: DistContext) -> bool:
    """Whether to stop before the next step; every rank agrees (a signal may reach only some)."""
    local = bool(config.should_stop is not None and config.should_stop())
    return dist.any(local) if dist.world_size > 1 else local


def _one_step(step, params, plist, loss_fn, prompts, order, optimizer, ema, config, dist) -> dict:
    for p in plist:
        p.grad = None
    mine = shard_batch(list(range(config.batch_size)), dist.rank, dist.world_size)
    micro_metrics, bad = [], False
    for micro in range(config.grad_accum):
        ids = order.take(config.batch_size)
        batch = Batch(prompts=[prompts[ids[p]] for p in mine],
                      indices=[micro * config.batch_size + p for p in mine],
                      step=step, seed=config.seed, micro=micro, grad_scale=1.0 / config.grad_accum)
        result = loss_fn(batch)
        loss = result.loss
        if loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}")
        if config.nan_guard and not bool(torch.isfinite(loss.detach())):
            bad = True
        elif loss.requires_grad and not result.backward_done:
            (loss / config.grad_accum).backward()
        micro_metrics.append(result.metrics)
    dist.all_reduce_grads(plist)
    if config.nan_guard:
        bad = dist.any(bad or not _grads_finite(plist))
    if bad:
        for p in plist:
            p.grad = None
        grad_norm = float("nan")
    else:
        if config.optim.grad_clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(plist, config.optim.grad_clip))
        else:
            grad_norm = _grad_norm(plist)
        optimizer.step()
        if ema is not None:
            ema.update(params)
    metrics = _merge_micro(micro_metrics)
    metrics.update({"step": step + 1, "skipped": bad, "grad_norm": grad_norm,
                    "lr": float(optimizer.param_groups[0]["lr"]), "epoch": order.epoch})
    return dist.reduce_metrics(metrics)


class _Saver:
    """Writes whole-state checkpoints (rank 0), with the run's fixed settings and its setting changes."""

    def __init__(self, params, optimizer, ema, order, config, dist, fixed, changes):
        self.params, self.optimizer, self.ema, self.order = params, optimizer, ema, order
        self.config, self.dist, self.fixed, self.changes = config, dist, fixed, changes
        self.last: Path | None = None

    def save(self, step: int) -> Path | None:
        path = None
        if self.dist.is_main:
            folder = Path(self.config.checkpoint_dir)
            state = {
                "format": FORMAT, "version": VERSION, "step": step,
                "params": {k: v.detach().cpu().clone() for k, v in self.params.items()},
                "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": rng_state(),
                "data": self.order.state(),
                "seed": self.config.seed,
                "prompt_count": self.order.count,
                "config": self.config.to_dict(),
                "settings": self.fixed,
                "changes": list(self.changes),
            }
            path = atomic_save(state, folder / checkpoint_name(step))
            prune(folder, self.config.keep_checkpoints)
        self.dist.barrier()
        self.last = path
        return path


def _changeable(config: TrainConfig) -> dict:
    optim = config.optim
    return {"lr": optim.lr, "weight_decay": optim.weight_decay, "grad_clip": optim.grad_clip,
            "ema_decay": optim.ema_decay, "steps": config.steps}


def _check_fixed(path, saved: Mapping, now: Mapping) -> None:
    """Refuse a resume that changes what the checkpoint fixes; name every such setting."""
    changed = [f"{key} (checkpoint: {saved[key]!r}, now: {now[key]!r})"
               for key in sorted(set(saved) & set(now)) if saved[key] != now[key]]
    changed += [f"{key} (checkpoint: {saved[key]!r}, now: not set)" for key in sorted(set(saved) - set(now))]
    if changed:
        raise CheckpointError(f"cannot resume from {path}: it fixes settings that this run changes: "
                              f"{'; '.join(changed)}. Resume with the checkpoint's values, or start a new run")


def _restore(path, params, optimizer, ema, order, config, prompt_count, fixed) -> tuple[int, list, dict]:
    state = safe_load(path)
    saved = state["params"]
    if list(saved) != list(params):
        raise CheckpointError(f"{path} holds parameters {sorted(saved)[:5]}..., which do not match the ones "
                              f"being trained {sorted(params)[:5]}... (same LoRA/targets needed to resume)")
    for name, p in params.items():
        if saved[name].shape != p.shape:
            raise CheckpointError(f"{path}: parameter {name!r} has shape {tuple(saved[name].shape)}, "
                                  f"expected {tuple(p.shape)}")
    if state["seed"] != config.seed or state["prompt_count"] != prompt_count:
        raise CheckpointError(f"{path} was written for seed {state['seed']} and {state['prompt_count']} prompts; "
                              f"this run has seed {config.seed} and {prompt_count} prompts")
    _check_fixed(path, state.get("settings") or {}, fixed)
    if (state["ema"] is None) != (ema is None):
        raise CheckpointError(f"{path} {'has no' if ema is not None else 'has an'} EMA state but this run "
                              f"{'keeps' if ema is not None else 'does not keep'} one (ema_decay 0 turns it off)")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # the new run's values, not the checkpoint's
        group.update(lr=config.optim.lr, weight_decay=config.optim.weight_decay,
                     betas=tuple(config.optim.betas), eps=config.optim.eps)
    if ema is not None:
        ema.load_state_dict(state["ema"])
        ema.decay = float(config.optim.ema_decay)
    set_rng_state(state["rng"])
    data = state["data"]
    order.restore(int(data["epoch"]), int(data["offset"]))
    step = int(state["step"])
    old_config = state.get("config") or {}
    old = {"lr": old_config.get("optim", {}).get("lr"), "weight_decay": old_config.get("optim", {}).get("weight_decay"),
           "grad_clip": old_config.get("optim", {}).get("grad_clip"),
           "ema_decay": old_config.get("optim", {}).get("ema_decay"), "steps": old_config.get("steps")}
    new = _changeable(config)
    changed_now = {key: [old[key], new[key]] for key in CHANGEABLE if old[key] is not None and old[key] != new[key]}
    changes = list(state.get("changes") or [])
    if changed_now:
        changes.append({"step": step, **changed_now})
    return step, changes, changed_now
