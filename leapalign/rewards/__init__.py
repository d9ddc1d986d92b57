"""Differentiable reward models: images ``[B, 3, H, W]`` in [0, 1] + prompts -> scores ``[B]``.

Real rewards load from local files only (HPSv2.1, HPSv3, PickScore, ImageReward, CLIP score, LAION
aesthetic); built-ins need no file. See the README section "Reward models" for where each checkpoint comes from.
"""

from .base import MissingRewardDependency, Reward, RewardLoadError
from .builtin import BrightnessReward, ColorTargetReward
from .combine import WeightedSumReward
from .registry import REWARD_KINDS, RewardKind, load_reward

__all__ = [
    "REWARD_KINDS",
    "BrightnessReward",
    "ColorTargetReward",
    "MissingRewardDependency",
    "Reward",
    "RewardKind",
    "RewardLoadError",
    "WeightedSumReward",
    "load_reward",
]
