"""Qwen2-VL image preprocessing in torch, so a VLM reward's gradient reaches the pixels.

Qwen2-VL reads an image at a dynamic resolution: ``smart_resize`` picks the size nearest the
original whose sides are multiples of ``patch * merge`` (28) and whose area lies in
``[min_pixels, max_pixels]``; the image is resized to it (PIL's 8-bit bicubic in the released
pipeline, reproduced by ``preprocess.resize_like_pil``: same kernel, same two 8-bit passes, the
rounding straight-through for the gradient), normalized with CLIP's mean/std, repeated
``temporal_patch`` times (an image is a two-frame video) and cut into flattened patches ordered so
that every ``merge x merge`` block of patches is contiguous. The output is what
``Qwen2VLImageProcessor`` returns as ``pixel_values`` and ``image_grid_thw``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize, resize_like_pil


@dataclass(frozen=True)
class QwenImageSettings:
    """The image-processor settings that decide a Qwen2-VL model's pixel input."""

    min_pixels: int
    max_pixels: int
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's target (height, width): multiples of ``factor``, area within the pixel budget,
    aspect ratio kept as closely as that allows."""
    if min(height, width) < 1:
        raise ValueError(f"cannot resize a {height}x{width} image")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of a {height}x{width} image is above 200, which Qwen2-VL refuses")
    new_h = max(factor, round(height / factor) * factor)
    new_w = max(factor, round(width / factor) * factor)
    if new_h * new_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_h = max(factor, math.floor(height / beta / factor) * factor)
        new_w = max(factor, math.floor(width / beta / factor) * factor)
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * beta / factor) * factor
        new_w = math.ceil(width * beta / factor) * factor
    return new_h, new_w


def patchify(images: Tensor, s: QwenImageSettings) -> Tensor:
    """``[B, C, H, W]`` (H, W multiples of ``patch * merge``) -> ``[B * gh * gw, C * T * p * p]``.

    Patch rows are ordered (merge-block row, merge-block column, row inside block, column inside
    block); each row flattens (channel, frame, y, x), the layout the vision tower's 3D conv expects.
    """
    b, c, h, w = images.shape
    p, m, t = s.patch_size, s.merge_size, s.temporal_patch_size
    gh, gw = h // p, w // p
    frames = images.unsqueeze(1).expand(b, t, c, h, w)
    blocks = frames.reshape(b, t, c, gh // m, m, p, gw // m, m, p)
    # -> (b, block row, block col, row in block, col in block, c, t, y, x)
    blocks = blocks.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return blocks.reshape(b * gh * gw, c * t * p * p)


def qwen_pixels(images: Tensor, s: QwenImageSettings) -> tuple[Tensor, Tensor]:
    """Images ``[B, 3, H, W]`` in [0, 1] -> (``pixel_values``, ``image_grid_thw`` ``[B, 3]``), differentiably."""
    height, width = images.shape[-2:]
    new_h, new_w = smart_resize(height, width, s.factor, s.min_pixels, s.max_pixels)
    if (new_h, new_w) != (height, width):
        images = resize_like_pil(images, (new_h, new_w))
    pixels = patchify(normalize(images, s.mean, s.std), s)
    grid = torch.tensor([[1, new_h // s.patch_size, new_w // s.patch_size]] * images.shape[0], device=images.device)
    return pixels, grid
