"""Scoring generated digits: judge accuracy, reward-net accuracy and mean reward, overall and per digit.

The held-out evaluation set is fixed: every digit prompt, ``samples_per_digit`` initial noises drawn
from ``EVAL_SEED`` (a seed the training loop never uses, whose noise is keyed by its own seed, step
and sample index), the same noises for every digit so a grid column shows one noise under ten prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .prompts import parse_digits
from .reward import DigitClassifierReward

EVAL_SEED = 987654321
SAMPLES_PER_DIGIT = 24


@dataclass
class DigitsScore:
    """Evaluation of one set of pictures: fractions in [0, 1], reward on its log-probability scale."""

    samples: int
    judge_accuracy: float
    reward_accuracy: float
    mean_reward: float
    judge_accuracy_per_digit: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def score_digits(images: Tensor, prompts: Sequence[str], reward: DigitClassifierReward,
                 judge: DigitClassifierReward) -> DigitsScore:
    """Score pictures ``[B, 3, H, W]`` in [0, 1], one prompt each."""
    if images.shape[0] != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts for {images.shape[0]} pictures")
    digits = torch.tensor(parse_digits(prompts))
    judged = judge.correct(images, prompts).cpu()
    rewarded = reward.correct(images, prompts).cpu()
    rewards = reward(images, list(prompts)).cpu()
    per_digit = [float(judged[digits == d].float().mean()) if bool((digits == d).any()) else float("nan")
                 for d in range(10)]
    return DigitsScore(samples=len(prompts), judge_accuracy=float(judged.float().mean()),
                       reward_accuracy=float(rewarded.float().mean()), mean_reward=float(rewards.mean()),
                       judge_accuracy_per_digit=per_digit)
