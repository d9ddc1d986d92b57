"""No-grad Euler rollout that keeps only the latents a method needs.

The step is written ``x = x + v * (s_next - s)`` with the velocity called on ``sigma = s_i`` for every
sample, operand for operand what ComfyUI's ``sample_euler`` does with ``d = (x - denoised) / sigma``, so
a ComfyUI velocity adapter reproduces the stock sampler's latents bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .sigmas import n_steps, validate_sigmas
from .types import VelocityFn


@dataclass
class Rollout:
    """Latents of one sampled trajectory, by grid index (0 = noise, N = final sample).

    ``final`` is the last integrated latent (``x_N`` unless the rollout was stopped early with
    ``stop``). ``pair`` optionally records the (k, j) the rollout was captured for, so a separate
    leap-loss step (a separate graph node) can pick it up.
    """

    latents: dict[int, Tensor]
    sigmas: Tensor
    final: Tensor
    stop: int
    pair: tuple[int, int] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return n_steps(self.sigmas)

    @property
    def batch_size(self) -> int:
        return int(self.final.shape[0])

    def latent(self, index: int) -> Tensor:
        """The latent at grid index ``index``; ``KeyError`` with the kept indices if it was not kept."""
        if index == self.stop:
            return self.final
        if index not in self.latents:
            raise KeyError(f"grid index {index} was not kept by this rollout (kept: {sorted(self.latents)}); "
                           "capture it with keep=... including that index")
        return self.latents[index]

    def __getitem__(self, index: int) -> Tensor:
        return self.latent(index)


def sigma_batch(sigma: Tensor, batch: int) -> Tensor:
    """The per-sample sigma vector ``[B]`` handed to a velocity (grid dtype, like ComfyUI's ``sigma * s_in``)."""
    return sigma.reshape(()).expand(batch).clone()


def euler_step(velocity: VelocityFn, x: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
    """One Euler step; operand order matches ComfyUI's ``x = x + d * dt``."""
    v = velocity(x, sigma_batch(s, x.shape[0]))
    return x + v.to(x.dtype) * (s_next - s)


def capture_rollout(velocity: VelocityFn, noise: Tensor, sigmas: Tensor,
                    keep: Iterable[int] | None = None, dtype: torch.dtype | None = None, *,
                    stop: int | None = None, step_callback: Callable[[int], None] | None = None) -> Rollout:
    """Integrate from ``noise`` along ``sigmas`` without autograd and keep the latents at ``keep``.

    ``keep=None`` keeps every grid point (the whole trajectory); an iterable keeps only those grid
    indices (memory O(1) in N). ``final`` is always kept. ``dtype`` runs the integration in that dtype
    (e.g. ``torch.bfloat16``); kept latents are cast back to the noise dtype. ``stop`` ends the rollout
    at that grid index (ReFL and DRaFT-K need only the first part of the chain). ``step_callback(i)``
    runs after step ``i`` (progress bars, interruption).
    """
    sigmas = validate_sigmas(sigmas)
    steps = n_steps(sigmas)
    stop = steps if stop is None else int(stop)
    if not 0 <= stop <= steps:
        raise ValueError(f"stop = {stop} is outside 0..{steps}")
    if keep is None:
        wanted = set(range(stop + 1))
    else:
        wanted = {int(i) for i in keep}
        bad = sorted(i for i in wanted if not 0 <= i <= stop)
        if bad:
            raise ValueError(f"keep indices {bad} are outside the rollout's grid 0..{stop}")
    out_dtype = noise.dtype
    run_dtype = dtype or noise.dtype
    latents: dict[int, Tensor] = {}
    with torch.no_grad():
        x = noise.detach().to(run_dtype)
        if 0 in wanted:
            latents[0] = x.to(out_dtype).clone()
        for i in range(stop):
            x = euler_step(velocity, x, sigmas[i], sigmas[i + 1])
            if i + 1 in wanted:
                latents[i + 1] = x.to(out_dtype)
            if step_callback is not None:
                step_callback(i)
        final = x.to(out_dtype)
    return Rollout(latents=latents, sigmas=sigmas, final=final, stop=stop)
