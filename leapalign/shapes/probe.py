"""Which sampling steps decide the composition? A noise-swap probe on a velocity field.

Run trajectory A from noise ``z_a``. At grid point i, keep A's current prediction of the clean
picture, ``xhat_0 = x_i - s_i v(x_i, s_i)``, but swap its noise for another noise ``z_b``:
``x_i' = (1 - s_i) xhat_0 + s_i z_b``, and integrate on. If the composition (which cells hold which
shape in which colour) of the result still equals A's, it was already decided by step i; if it
follows the new noise, it was not. LeapAlign's claim is that the early, high-noise steps decide it,
which is why it trains them and late-step methods (ReFL, DRaFT-LV) cannot.

The probe reads the composition in parts (``ASPECTS``), because real text-to-image models decide them
at different times: the layout (which cells hold an object) and the count first, colours next, the
exact outline (here: which shape) last.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..rollout import euler_step, sigma_batch
from ..types import VelocityFn
from . import spec
from .judge import parse_picture

ASPECTS = ("layout", "count", "colours", "shapes", "composition")


def layout(picture: Tensor) -> tuple:
    """The composition of a picture: sorted (cell row, cell col, shape, colour) of its parsed objects."""
    return tuple(sorted((int(d.row) // spec.CELL, int(d.col) // spec.CELL, d.shape, d.colour)
                        for d in parse_picture(picture)))


def aspects(picture: Tensor) -> dict[str, tuple | int]:
    """The parts of a picture's composition: occupied cells, object count, colour and shape per cell, all."""
    full = layout(picture)
    return {"layout": tuple(o[:2] for o in full), "count": len(full), "colours": tuple((*o[:2], o[3]) for o in full),
            "shapes": tuple(o[:3] for o in full), "composition": full}


@torch.no_grad()
def swap_noise_at(velocity: VelocityFn, z_a: Tensor, z_b: Tensor, sigmas: Tensor, step: int) -> Tensor:
    """Final latents of trajectory A with its noise swapped for ``z_b`` at grid point ``step``."""
    x = z_a
    for i in range(len(sigmas) - 1):
        if i == step:
            s = sigmas[i]
            xhat_0 = x - s * velocity(x, sigma_batch(s, x.shape[0])).to(x.dtype)
            x = (1 - s) * xhat_0 + s * z_b
        x = euler_step(velocity, x, sigmas[i], sigmas[i + 1])
    return x


@torch.no_grad()
def composition_kept(velocity: VelocityFn, decode: Callable[[Tensor], Tensor], z_a: Tensor, z_b: Tensor,
                     sigmas: Tensor, steps: list[int]) -> dict[int, dict[str, float]]:
    """For each swap step and each of ``ASPECTS``: the fraction of samples for which it is still A's.

    Step 0 (sigma 1: nothing of A is left) gives the chance level, two unrelated samples agreeing.
    """
    reference = [aspects(p) for p in decode(swap_noise_at(velocity, z_a, z_a, sigmas, len(sigmas)))]
    out = {}
    for step in steps:
        swapped = [aspects(p) for p in decode(swap_noise_at(velocity, z_a, z_b, sigmas, step))]
        out[step] = {k: sum(a[k] == b[k] for a, b in zip(reference, swapped)) / len(reference) for k in ASPECTS}
    return out
