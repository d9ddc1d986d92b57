"""Reward-model image preprocessing in torch, equal to each reward's reference, so the gradient reaches the pixels.

The reward models were trained and are scored with one of two reference pipelines; each reward module
says which one it follows (and the package version), and tests/unit/test_rewards_preprocess.py runs the
reference packages' own transforms on the same images to check it.

* Shorter side + centre crop on 8-bit PIL images: OpenAI ``clip``'s ``_transform`` (the aesthetic
  predictor, ImageReward) and transformers' ``CLIPImageProcessor`` with its PIL backend (PickScore,
  CLIP score). Both resize the shorter side to ``size`` (the longer one truncated to an int) with PIL's
  antialiased bicubic, whose kernel torch's ``antialias=True`` bicubic reproduces. PIL resizes in two
  passes, horizontal first, and rounds and clips the result of each pass to 0..255; here each pass is
  one torch call along one axis, clamped to [0, 1] and rounded to 8 bits in the forward pass only
  (straight-through, so the gradient is the float resize's; :func:`resize_like_pil`). Without the
  clamps, sharp edges overshoot by up to ~25/255; with clamps but no rounding, pixels differ by up to
  one 8-bit step (0.25 on average) and tiny-model PickScores by up to 5e-3; with both, they match PIL
  to one step at a few isolated pixels (fixed-point ties). The two references differ in the crop
  offset: torchvision's ``CenterCrop`` rounds ``(side - crop) / 2`` half to even, transformers floors
  it; they disagree by a pixel when ``side - crop`` is 3 mod 4 (e.g. 832x1216 -> 224x327).
* Longest side + zero pad in float: hpsv2's ``ResizeMaxSize`` (HPSv2.1) runs on the ``ToTensor``
  float image: antialiased bicubic (torchvision >= 0.17 defaults to ``antialias=True`` on tensors), no
  clamp, the longer side to ``size`` and both sides ``round(side * size / longer)``, then zeros padded
  (``pad // 2`` before, the rest after) before normalization (:func:`longest_side_preprocess`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CropOffset = Literal["floor", "round"]


def resized_shorter_side(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (h, w) of torchvision ``Resize(size)`` and transformers' ``shortest_edge``: the longer side truncated."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resized_longer_side(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (h, w) of hpsv2's ``ResizeMaxSize(size)``: both sides scaled by ``size / longer``, rounded."""
    scale = size / float(max(height, width))
    return round(height * scale), round(width * scale)


def _bicubic(images: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)


def as_8bit(images: Tensor) -> Tensor:
    """Clip to [0, 1] and round to 1/255 as PIL does after a pass (half up); the rounding is straight-through:
    forward values are PIL's, the gradient is that of the clamp alone."""
    clipped = images.clamp(0.0, 1.0)
    return clipped + (torch.floor(clipped.detach() * 255.0 + 0.5) / 255.0 - clipped.detach())


def resize_like_pil(images: Tensor, size: tuple[int, int]) -> Tensor:
    """PIL's 8-bit bicubic resize: horizontal pass, to 8 bits, vertical pass, to 8 bits (a pass only if needed)."""
    height, width = images.shape[-2:]
    new_h, new_w = size
    if new_w != width:
        images = as_8bit(_bicubic(images, (height, new_w)))
    if new_h != height:
        images = as_8bit(_bicubic(images, (new_h, new_w)))
    return images


def crop_start(side: int, crop: int, offset: CropOffset) -> int:
    """Where a centred crop starts: torchvision rounds (half to even), transformers floors."""
    if offset == "floor":
        return (side - crop) // 2
    if offset == "round":
        return int(round((side - crop) / 2.0))
    raise ValueError(f"crop offset must be 'floor' or 'round', got {offset!r}")


def center_crop(images: Tensor, size: int, offset: CropOffset = "floor") -> Tensor:
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot center-crop {size}x{size} from a {height}x{width} image")
    top, left = crop_start(height, size, offset), crop_start(width, size, offset)
    return images[..., top:top + size, left:left + size]


def pad_to_square(images: Tensor, size: int) -> Tensor:
    """Zero-pad to ``size`` x ``size`` as hpsv2 does: ``pad // 2`` on the left/top, the rest right/bottom."""
    height, width = images.shape[-2:]
    pad_h, pad_w = size - height, size - width
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"cannot pad a {height}x{width} image to {size}x{size}")
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def clip_preprocess(images: Tensor, size: int, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                    std: Sequence[float] = OPENAI_CLIP_STD, crop_size: int | None = None,
                    *, crop_offset: CropOffset = "floor") -> Tensor:
    """Shorter side to ``size`` (PIL-like, 8-bit clamps), centre crop, normalize: ``[B, 3, H, W]`` in [0, 1] ->
    ``[B, 3, crop, crop]``. ``crop_offset``: ``"floor"`` for transformers' processor, ``"round"`` for torchvision's."""
    crop_size = size if crop_size is None else crop_size
    resized = resize_like_pil(images, resized_shorter_side(*images.shape[-2:], size))
    return normalize(center_crop(resized, crop_size, crop_offset), mean, std)


def longest_side_preprocess(images: Tensor, size: int, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                            std: Sequence[float] = OPENAI_CLIP_STD) -> Tensor:
    """hpsv2's evaluation transform: longer side to ``size`` in float, zero pad to a square, normalize.

    An image whose longer side already is ``size`` is not resized (as in hpsv2); a non-square one is
    still padded here, where hpsv2 would hand the model a non-square input it cannot take.
    """
    height, width = images.shape[-2:]
    new_size = resized_longer_side(height, width, size)
    if new_size != (height, width):
        images = _bicubic(images, new_size)
    return normalize(pad_to_square(images, size), mean, std)
