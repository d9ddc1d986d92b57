"""The digits world's latent codec: a fixed, exactly invertible linear map standing in for a VAE.

An 8x8 grayscale digit (values in [-1, 1], dark ink on white; the resolution of the data set) is cut
into 4x4 pixel blocks, each block becoming the 16 channels of one latent position (pixel unshuffle).
Pictures are the digits at 2x (16x16 RGB), so a picture maps to a ``[16, 2, 2]`` latent: Flux's 16
channels at its usual 8x spatial compression. The latent
is scaled and shifted so that, after Flux's own latent format (``(z - 0.1159) * 0.3611``), the
model works directly on pixel values: model-space latents are readable, and nothing is learned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

FLUX_LATENT_SCALE = 0.3611
FLUX_LATENT_SHIFT = 0.1159
IMAGE_SIZE = 16
DIGIT_SIZE = 8
LATENT_CHANNELS = 16
BLOCK = 4


class DigitsCodec(torch.nn.Module):
    """``encode``: images ``[B, 3, 16, 16]`` in [-1, 1] -> VAE latents ``[B, 16, 2, 2]``; ``decode`` back.

    Both are linear and differentiable; ``decode(encode(x)) == x`` for any picture that is the 2x
    nearest upsampling of a grayscale 8x8 digit (what ``decode`` produces).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("latent_scale", torch.tensor(FLUX_LATENT_SCALE))
        self.register_buffer("latent_shift", torch.tensor(FLUX_LATENT_SHIFT))

    def encode(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"the digits codec encodes [B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}] images, "
                             f"got {tuple(images.shape)}")
        gray = images.mean(dim=1, keepdim=True)
        digit = F.avg_pool2d(gray, IMAGE_SIZE // DIGIT_SIZE)
        return pixels_to_latent(digit) / self.latent_scale + self.latent_shift

    def decode(self, latents: Tensor) -> Tensor:
        if latents.ndim != 4 or latents.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"the digits codec decodes [B, {LATENT_CHANNELS}, h, w] latents, got {tuple(latents.shape)}")
        digit = latent_to_pixels((latents - self.latent_shift) * self.latent_scale)
        image = F.interpolate(digit, scale_factor=IMAGE_SIZE // DIGIT_SIZE, mode="nearest")
        # A tensor that owns its memory, not an expand() view: ComfyUI 0.18+ post-processes VAE output in place.
        return image.repeat(1, 3, 1, 1)


def pixels_to_latent(digit: Tensor) -> Tensor:
    """``[B, 1, 8, 8]`` pixels in [-1, 1] -> model-space latents ``[B, 16, 2, 2]`` (same numbers, regrouped)."""
    return F.pixel_unshuffle(digit, BLOCK)


def latent_to_pixels(latents: Tensor) -> Tensor:
    """Model-space latents ``[B, 16, h, w]`` -> grayscale pixels ``[B, 1, 4h, 4w]`` in about [-1, 1]."""
    return F.pixel_shuffle(latents, BLOCK)
