"""CLIP-style image preprocessing in torch, so the reward gradient reaches the pixels.

It reproduces the PIL pipeline the reward models were trained with (torchvision ``Resize(size,
BICUBIC)`` on the shorter side, ``CenterCrop(size)``, ``Normalize(mean, std)``): torch's antialiased
bicubic resize uses PIL's kernel, and the output size and crop offsets follow torchvision's rounding.
The only difference left is that PIL works on 8-bit images (measured in tests/unit/test_rewards_preprocess.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resized_shorter_side(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (h, w) of torchvision ``Resize(size)``: shorter side to ``size``, longer side truncated."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_shorter_side(images: Tensor, size: int) -> Tensor:
    height, width = images.shape[-2:]
    new_h, new_w = resized_shorter_side(height, width, size)
    if (new_h, new_w) == (height, width):
        return images
    return F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)


def center_crop(images: Tensor, size: int) -> Tensor:
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot center-crop {size}x{size} from a {height}x{width} image")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return images[..., top:top + size, left:left + size]


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def clip_preprocess(images: Tensor, size: int, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                    std: Sequence[float] = OPENAI_CLIP_STD, crop_size: int | None = None) -> Tensor:
    """Images ``[B, 3, H, W]`` in [0, 1] -> normalized ``[B, 3, crop, crop]`` model input, differentiably."""
    crop_size = size if crop_size is None else crop_size
    return normalize(center_crop(resize_shorter_side(images, size), crop_size), mean, std)
