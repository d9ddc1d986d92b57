"""The callables and records that connect the core to its callers (ComfyUI nodes, CLI, benches).

Everything here is a plain type: the core never sees a ComfyUI object, only these callables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .noise import per_sample_noise, step_generator

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``(x [B, ...], sigma [B]) -> v`` with the conditioning already bound for that batch.

Sigma is the rectified-flow time (``x_t = (1 - t) x_0 + t noise``) and ``v ≈ noise - x_0``: for a
ComfyUI model the adapter returns ``(x - denoised) / sigma``, the direction its Euler sampler steps along.
"""

DecoderFn = Callable[[Tensor], Tensor]
"""Model-space latent ``[B, C, h, w]`` -> images ``[B, 3, H, W]`` in [0, 1]; must keep the graph."""

RewardFn = Callable[[Tensor, Sequence[str]], Tensor]
"""Images ``[B, 3, H, W]`` in [0, 1] plus prompts -> scores ``[B]``, differentiable in the images."""


@dataclass(frozen=True)
class Batch:
    """One rank's share of one micro-batch, and the seeds that make it reproducible anywhere.

    ``indices`` are the global sample indices inside the optimizer step (``micro * global_batch +
    position``), so noise drawn with :meth:`noise` is the same whether the global batch runs on one
    rank or is split across several. :meth:`generator` is seeded by ``(seed, step)`` only, so every
    rank and every micro-batch of one optimizer step draws the same (k, j): one pair per update, as
    in the released code.
    """

    prompts: list[str]
    indices: list[int]
    step: int
    seed: int
    micro: int = 0
    grad_scale: float = 1.0
    """What a ``loss_fn`` that runs backward itself multiplies its loss by (1 / gradient accumulation)."""

    def generator(self) -> torch.Generator:
        """The per-update generator for method randomness ((k, j), ReFL's late point, ...)."""
        return step_generator(self.seed, self.step)

    def noise(self, shape: Sequence[int], dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
        """Initial noise ``[len(prompts), *shape]``: sample ``i`` depends only on ``(seed, step, indices[i])``."""
        return per_sample_noise(shape, self.seed, self.step, self.indices, dtype=dtype, device=device)


@dataclass
class LossResult:
    """A scalar loss that carries the graph, and the diagnostics a user needs to trust a run.

    ``metrics`` values are floats (batch means) or lists (one entry per local sample).
    """

    loss: Tensor
    metrics: dict[str, float | int | list] = field(default_factory=dict)
    backward_done: bool = False
    """True when ``loss_fn`` already ran ``(loss * batch.grad_scale).backward()`` itself.

    ComfyUI's velocity only lives inside a sampler call (the guider drops its model afterwards), so a
    method that recomputes velocities during backward (gradient checkpointing) must run backward there.
    """
