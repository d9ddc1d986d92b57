"""The reward interface every scorer implements, and the errors a reward raises while loading.

A reward maps images ``[B, 3, H, W]`` in [0, 1] plus one prompt per image to scores ``[B]``. It is
differentiable in the images: its parameters are frozen (``requires_grad`` False) but it never runs
under ``no_grad``, so the training methods can back-propagate the score into the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

PIP_EXTRA = "pip install leapalign-comfy[rewards]"


class RewardLoadError(ValueError):
    """A reward checkpoint is missing, truncated, or is not the file this reward expects."""


class MissingRewardDependency(ImportError):
    """An optional package a reward needs is not installed."""


def load_error(reward: str, path: object, problem: str, expected: str) -> RewardLoadError:
    """One message shape for every loading failure: which reward, which path, what went wrong, what it wants."""
    return RewardLoadError(f"{reward}: cannot load {path}: {problem}. Expected {expected}.")


def require_module(module: str, package: str, reward: str):
    """Import an optional dependency, or say which pip extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingRewardDependency(
            f"{reward} needs the optional package {package!r} ({exc}); install it with `{PIP_EXTRA}`"
        ) from exc


class Reward(nn.Module):
    """Base class: shape checks, prompt broadcasting, device/dtype policy and frozen weights.

    Subclasses implement :meth:`score` on images already moved to the reward's device and dtype.
    Attributes:
        name: short identifier (``hpsv2.1``, ``pickscore`` ...).
        scale: the natural range of the score in words, so a user can pick a hinge lambda.
        default_lambda: hinge threshold on this reward's own score scale (see the README section "Reward models").

    Device/dtype policy: ``reward.to(device, dtype)`` moves the weights as for any module; inputs are
    cast to the weights' device and dtype, and scores come back as float32 on the images' device so
    the loss can be formed next to the images whatever precision the reward runs in.
    """

    name: str = "reward"
    scale: str = ""
    default_lambda: float = 0.0

    def freeze(self) -> Reward:
        """Freeze the weights and switch dropout off for good; gradients still flow to the inputs."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Reward:
        # A reward is a fixed judge: dropout/batch-norm stay in inference behaviour even if a parent
        # module is put into training mode.
        return super().train(False)

    @property
    def weight_device(self) -> torch.device | None:
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return None

    @property
    def weight_dtype(self) -> torch.dtype | None:
        for tensor in (*self.parameters(), *self.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return None

    def forward(self, images: Tensor, prompts: Sequence[str] | str) -> Tensor:
        images = check_images(images, self.name)
        prompts = match_prompts(prompts, images.shape[0], self.name)
        # Preprocessing (resize, crop) runs in float32 on the weights' device; subclasses cast the
        # preprocessed pixels to the weights' dtype with ``as_model_input``.
        inputs = images.to(device=self.weight_device or images.device, dtype=torch.float32)
        scores = self.score(inputs, prompts)
        if scores.shape != (images.shape[0],):
            raise RuntimeError(f"{self.name}: score() returned shape {tuple(scores.shape)}, expected ({images.shape[0]},)")
        return scores.to(device=images.device, dtype=torch.float32)

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        """Scores ``[B]`` for float32 images in [0, 1] on the weights' device, one prompt per image."""
        raise NotImplementedError

    def as_model_input(self, pixels: Tensor) -> Tensor:
        return pixels.to(dtype=self.weight_dtype or pixels.dtype)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, scale={self.scale!r}, default_lambda={self.default_lambda}"


def check_images(images: Tensor, reward: str) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{reward}: expected images [B, 3, H, W] in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{reward}: expected floating-point images in [0, 1], got dtype {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"{reward}: got an empty image batch")
    return images


def match_prompts(prompts: Sequence[str] | str, batch: int, reward: str) -> list[str]:
    """One prompt per image; a single prompt is repeated for the whole batch."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{reward}: prompts must be strings")
    if len(prompts) == 1:
        return prompts * batch
    if len(prompts) != batch:
        raise ValueError(f"{reward}: got {len(prompts)} prompts for {batch} images; give one per image or a single one")
    return prompts
