"""The shapes world's latent codec: per cell, the amplitude of each shape template in each colour channel.

A picture is a 4x4 grid of 8x8 cells; cell content is ``sum_{shape, rgb} a[shape, rgb] * mask[shape] * e_rgb``
with the three fixed 6x6 shape masks. The latent of a cell holds those nine amplitudes (channels 0-8),
its colour (channels 9-11: the brightest amplitude of each colour channel) and its occupancy (channels
12-15, four copies of the brightest amplitude), so a ``[3, 32, 32]`` picture maps to a ``[16, 4, 4]``
latent: Flux's 16 channels at its 8x spatial compression. Model-space latents are ``2 a - 1`` (after
Flux's latent format), so a trajectory can be read cell by cell. Encoding is the least-squares inverse,
exact for every rendered scene; decoding reads channels 0-8 only.

Why the redundant channels: in a real VAE latent an object covers many latent values, so whether and
where it is stands out of the noise long before its outline does, and the early, noisy sampling steps
fix the layout and the count (measured in ``docs/benchmarks/fidelity.md``). With one amplitude per
object the occupancy of a cell is as faint as its shape and everything is decided in the last steps;
the seven summary channels give occupancy and colour that head start, and leave shape identity late.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import spec
from .scenes import template_masks

FLUX_LATENT_SCALE = 0.3611
FLUX_LATENT_SHIFT = 0.1159


def _basis() -> Tensor:
    """``[9, 3, 8, 8]``: basis picture of channel ``shape * 3 + rgb``."""
    masks = template_masks()
    basis = torch.zeros(spec.USED_CHANNELS, 3, spec.CELL, spec.CELL)
    for s in range(len(spec.SHAPES)):
        for c in range(3):
            basis[s * 3 + c, c] = masks[s]
    return basis


def amplitudes_to_pixels(amplitudes: Tensor) -> Tensor:
    """``[B, 9, 4, 4]`` amplitudes -> pictures ``[B, 3, 32, 32]`` (linear; 0 = black background)."""
    basis = _basis().to(amplitudes)
    cells = torch.einsum("bkhw,kcyx->bchywx", amplitudes, basis)
    b, c, h, _, w, _ = cells.shape
    return cells.reshape(b, c, h * spec.CELL, w * spec.CELL)


def pixels_to_amplitudes(pixels: Tensor) -> Tensor:
    """Least-squares inverse of :func:`amplitudes_to_pixels` per cell and colour channel."""
    masks = template_masks().to(pixels).flatten(1)                     # [3, 64]
    pinv = torch.linalg.pinv(masks.T)                                   # [3, 64]
    b = pixels.shape[0]
    cells = F.unfold(pixels, spec.CELL, stride=spec.CELL)              # [B, 3*64, 16]
    cells = cells.reshape(b, 3, spec.CELL * spec.CELL, spec.GRID * spec.GRID)
    amps = torch.einsum("sp,bcpn->bscn", pinv, cells)                   # [B, shape, rgb, 16]
    return amps.reshape(b, spec.USED_CHANNELS, spec.GRID, spec.GRID)


def summary_channels(amplitudes: Tensor) -> Tensor:
    """``[B, 7, h, w]``: each colour channel's brightest amplitude (3), then the cell's brightest (4 copies)."""
    b, _, h, w = amplitudes.shape
    amps = amplitudes.clamp(0.0, 1.0).reshape(b, len(spec.SHAPES), 3, h, w)
    colour = amps.amax(dim=1)
    occupancy = colour.amax(dim=1, keepdim=True)
    return torch.cat([colour, occupancy.expand(b, spec.LATENT_CHANNELS - spec.USED_CHANNELS - 3, h, w)], dim=1)


def amplitudes_to_model_latent(amplitudes: Tensor) -> Tensor:
    """Model-space latents ``[B, 16, 4, 4]``: ``2 a - 1`` of the amplitudes, ``SUMMARY_GAIN (2 a - 1)`` of the
    summary channels."""
    return torch.cat([amplitudes * 2.0 - 1.0, (summary_channels(amplitudes) * 2.0 - 1.0) * spec.SUMMARY_GAIN], dim=1)


def model_latent_to_amplitudes(latents: Tensor) -> Tensor:
    return (latents[:, :spec.USED_CHANNELS] + 1.0) / 2.0


class ShapesCodec(torch.nn.Module):
    """``encode``: pictures ``[B, 3, 32, 32]`` in [-1, 1] -> VAE latents ``[B, 16, 4, 4]``; ``decode`` back."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("latent_scale", torch.tensor(FLUX_LATENT_SCALE))
        self.register_buffer("latent_shift", torch.tensor(FLUX_LATENT_SHIFT))

    def encode(self, images: Tensor) -> Tensor:
        size = spec.IMAGE_SIZE
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % spec.CELL or images.shape[-2] % spec.CELL:
            raise ValueError(f"the shapes codec encodes [B, 3, H, W] pictures with H, W multiples of {spec.CELL} "
                             f"(the world's are {size}x{size}), got {tuple(images.shape)}")
        amps = pixels_to_amplitudes((images + 1.0) / 2.0)
        return amplitudes_to_model_latent(amps) / self.latent_scale + self.latent_shift

    def decode(self, latents: Tensor) -> Tensor:
        if latents.ndim != 4 or latents.shape[1] != spec.LATENT_CHANNELS:
            raise ValueError(f"the shapes codec decodes [B, {spec.LATENT_CHANNELS}, h, w] latents, "
                             f"got {tuple(latents.shape)}")
        amps = model_latent_to_amplitudes((latents - self.latent_shift) * self.latent_scale)
        return amplitudes_to_pixels(amps) * 2.0 - 1.0
