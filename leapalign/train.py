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


def train(params: Mapping[str, Tensor], loss_fn: LossFn, prompts: Sequence[str], config: TrainConfig, *,
          callback: Callback | None = None, dist: DistContext | None = None,
          resume: str | Path | None = None) -> TrainResult:
    """Optimize ``params`` (and only them) on ``loss_fn`` for ``config.steps`` optimizer steps in total.

    Each step draws ``config.grad_accum`` global micro-batches of ``config.batch_size`` prompts; this
    rank calls ``loss_fn`` on its slice. A step whose loss or averaged gradient is non-finite on any
    rank is skipped everywhere (gradients zeroed, weights, optimizer and EMA untouched) and reported as
    ``metrics["skipped"] = True``. ``callback(step, metrics)`` gets the 1-based count of completed
    steps. ``config.should_stop()`` is polled before each step; a stopped run writes a checkpoint (if
    a folder is set) so it can be resumed. ``resume`` is a checkpoint file or a folder (latest taken).
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
    start = 0
    if resume is not None:
        start = _restore(resolve_resume(resume), params, optimizer, ema, order, config, len(prompts))

    result = TrainResult(step=start, params=params, ema=None)
    last_saved: Path | None = None
    for step in range(start, config.steps):
        if config.should_stop is not None and config.should_stop():
            result.stopped = True
            break
        metrics = _one_step(step, params, plist, loss_fn, prompts, order, optimizer, ema, config, dist)
        result.step = step + 1
        result.skipped_steps += int(metrics["skipped"])
        result.history.append(metrics)
        if callback is not None:
            callback(step + 1, metrics)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            last_saved = _save(result.step, params, optimizer, ema, order, config, dist)
    saved_at_end = config.checkpoint_every and result.step % config.checkpoint_every == 0
    if config.checkpoint_dir and result.step > start and not saved_at_end:
        last_saved = _save(result.step, params, optimizer, ema, order, config, dist)
    result.checkpoint = last_saved
    result.ema = {k: v.clone() for k, v in ema.shadow.items()} if ema is not None else None
    return result


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


def _save(step, params, optimizer, ema, order, config, dist) -> Path | None:
    path = None
    if dist.is_main:
        folder = Path(config.checkpoint_dir)
        state = {
            "format": FORMAT, "version": VERSION, "step": step,
            "params": {k: v.detach().cpu().clone() for k, v in params.items()},
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "rng": rng_state(),
            "data": order.state(),
            "seed": config.seed,
            "prompt_count": order.count,
            "config": config.to_dict(),
        }
        path = atomic_save(state, folder / checkpoint_name(step))
        prune(folder, config.keep_checkpoints)
    dist.barrier()
    return path


def _restore(path, params, optimizer, ema, order, config, prompt_count) -> int:
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
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        if state["ema"] is None:
            raise CheckpointError(f"{path} has no EMA state but this run keeps an EMA")
        ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"])
    data = state["data"]
    order.restore(int(data["epoch"]), int(data["offset"]))
    return int(state["step"])
