"""Reward kinds by name, so nodes and the CLI can load any reward from (kind, path)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .aesthetic import AESTHETIC_EXPECTED, load_aesthetic
from .base import Reward
from .builtin import BrightnessReward, ColorTargetReward
from .clip_hf import CLIP_EXPECTED, PICKSCORE_EXPECTED, load_clip_score, load_pickscore
from .hps import HPS_EXPECTED, load_hpsv21
from .hpsv3 import HPSV3_EXPECTED, load_hpsv3
from .image_reward import IMAGEREWARD_EXPECTED, load_image_reward


@dataclass(frozen=True)
class RewardKind:
    name: str
    load: Callable[..., Reward]
    expects: str  # what the path must point to; "" for built-ins that need no file

    @property
    def builtin(self) -> bool:
        return not self.expects


def _builtin(factory: Callable[..., Reward]) -> Callable[..., Reward]:
    def load(path=None, **options) -> Reward:
        return factory(**options)

    return load


REWARD_KINDS: dict[str, RewardKind] = {kind.name: kind for kind in (
    RewardKind("hpsv2.1", load_hpsv21, HPS_EXPECTED),
    RewardKind("pickscore", load_pickscore, PICKSCORE_EXPECTED),
    RewardKind("imagereward", load_image_reward, IMAGEREWARD_EXPECTED),
    RewardKind("hpsv3", load_hpsv3, HPSV3_EXPECTED),
    RewardKind("clip_score", load_clip_score, CLIP_EXPECTED),
    RewardKind("aesthetic", load_aesthetic, AESTHETIC_EXPECTED),
    RewardKind("builtin_brightness", _builtin(BrightnessReward), ""),
    RewardKind("builtin_color_target", _builtin(ColorTargetReward), ""),
)}


def load_reward(kind: str, path: str | Path | None = None, **options) -> Reward:
    """Load a reward by kind from a local file or folder (built-ins take no path)."""
    if kind not in REWARD_KINDS:
        raise ValueError(f"unknown reward kind {kind!r}; choose one of {', '.join(REWARD_KINDS)}")
    spec = REWARD_KINDS[kind]
    if spec.builtin:
        return spec.load(**options)
    if path is None or str(path) == "":
        raise ValueError(f"reward {kind!r} needs a file: {spec.expects}")
    return spec.load(path, **options)
