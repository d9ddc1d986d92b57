"""Data parallelism by averaging gradients after backward (what DDP does), without wrapping a module.

The forward is an opaque pair of velocity calls through ComfyUI, so there is no module for DDP to
own; after ``backward`` every rank holds the gradient of its local mean loss, and averaging those over
equal-sized local batches gives the gradient of the global-batch mean loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import Tensor


@dataclass(frozen=True)
class DistContext:
    """Rank and world size; a single-process context does no communication."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DistContext:
        """From ``torch.distributed`` if a process group is initialized, else single-process."""
        if tdist.is_available() and tdist.is_initialized():
            return cls(tdist.get_rank(), tdist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_reduce_grads(self, params: Iterable[Tensor]) -> None:
        """Average ``.grad`` over ranks in one flat buffer; a missing grad counts as zeros."""
        if not self.active:
            return
        params = list(params)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        flat.div_(self.world_size)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (used to skip a step everywhere)."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0])
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def reduce_metrics(self, metrics: Mapping) -> dict:
        """Scalars averaged over ranks, per-sample lists concatenated in rank order, other values from rank 0."""
        if not self.active:
            return dict(metrics)
        gathered: list = [None] * self.world_size
        tdist.all_gather_object(gathered, dict(metrics))
        out = {}
        for key, value in metrics.items():
            values = [g.get(key) for g in gathered]
            if isinstance(value, bool) or not isinstance(value, (int, float, list)):
                out[key] = value
            elif isinstance(value, list):
                out[key] = [x for v in values if isinstance(v, list) for x in v]
            else:
                nums = [float(v) for v in values if isinstance(v, (int, float))]
                out[key] = math.fsum(nums) / len(nums) if isinstance(value, float) else value
        return out

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()


def resolve_dist(dist: DistContext | None) -> DistContext:
    return DistContext.current() if dist is None else dist
