"""Built-in toy rewards for tests and demos: no download, obvious optimum, exact gradients.

They judge only simple pixel statistics, so a training run with them shows the mechanics (the images
drift towards the target) without any learned model. They ignore the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Reward

# ITU-R BT.601 luma weights.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class BrightnessReward(Reward):
    """Built-in: mean luma of the image, in [0, 1]."""

    name = "builtin_brightness"
    scale = "mean luma (0.299 R + 0.587 G + 0.114 B) over pixels, 0 (black) to 1 (white)"
    default_lambda = 1.0  # push until white

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1).mean(dim=(1, 2))


class ColorTargetReward(Reward):
    """Built-in: minus the mean squared RGB distance of every pixel to a target colour."""

    name = "builtin_color_target"
    scale = "-(mean over pixels of the squared RGB distance to the target), -3 (far) to 0 (exact)"
    default_lambda = 0.0  # the hinge stops only at an exact match

    def __init__(self, target: Sequence[float] = (1.0, 0.0, 0.0)):
        super().__init__()
        target = tuple(float(c) for c in target)
        if len(target) != 3 or not all(0.0 <= c <= 1.0 for c in target):
            raise ValueError(f"builtin_color_target: target must be three numbers in [0, 1] (R, G, B), got {target}")
        self.target = target

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        target = torch.tensor(self.target, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return -((images - target) ** 2).sum(dim=1).mean(dim=(1, 2))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, target={self.target}"
