"""Scoring generated scenes GenEval-style: judge accuracy per category, the overall score, and reward.

The overall score is the mean of the six category accuracies (GenEval's "overall"), so categories
with many prompts (colour attribution has 72) do not drown the small ones. The held-out evaluation
uses every prompt with ``SAMPLES_PER_PROMPT`` noises drawn from ``EVAL_SEED``, a seed training never uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from .judge import judge
from .prompts import CATEGORIES, category_of

EVAL_SEED = 987654321
SAMPLES_PER_PROMPT = 4


@dataclass
class ShapesScore:
    """Fractions in [0, 1]; reward on its log-probability scale; ``quality`` filled by the caller."""

    samples: int
    overall: float
    per_category: dict[str, float]
    mean_reward: float
    reward_accuracy: float
    quality: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def category_accuracy(correct: Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """Mean of ``correct`` per GenEval category (NaN for a category with no prompt)."""
    cats = [category_of(p) for p in prompts]
    out = {}
    for cat in CATEGORIES:
        rows = [i for i, c in enumerate(cats) if c == cat]
        out[cat] = float(correct[rows].float().mean()) if rows else float("nan")
    return out


@torch.no_grad()
def score_shapes(pictures: Tensor, prompts: Sequence[str], reward) -> ShapesScore:
    """Score pictures ``[B, 3, 32, 32]`` in [0, 1], one prompt each, with the judge and ``reward``."""
    if pictures.shape[0] != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts for {pictures.shape[0]} pictures")
    correct = judge(pictures, list(prompts))
    per_category = category_accuracy(correct, prompts)
    present = [v for v in per_category.values() if v == v]
    rewards = reward(pictures, list(prompts)).float().cpu()
    return ShapesScore(samples=len(prompts), overall=sum(present) / len(present), per_category=per_category,
                       mean_reward=float(rewards.mean()),
                       reward_accuracy=float((rewards > torch.log(torch.tensor(0.5))).float().mean()))


def format_shapes_scores(**scores: ShapesScore) -> list[str]:
    """A plain-text table: one column per labelled score, one row per category."""
    labels = list(scores)
    lines = ["category".ljust(16) + "".join(label.rjust(10) for label in labels)]
    for cat in CATEGORIES:
        lines.append(cat.ljust(16) + "".join(f"{scores[label].per_category[cat]:10.3f}" for label in labels))
    lines.append("overall".ljust(16) + "".join(f"{scores[label].overall:10.3f}" for label in labels))
    lines.append("mean reward".ljust(16) + "".join(f"{scores[label].mean_reward:10.3f}" for label in labels))
    for key in scores[labels[0]].quality:
        lines.append(key.ljust(16) + "".join(f"{scores[label].quality.get(key, float('nan')):10.3f}" for label in labels))
    return lines


def real_scenes(prompts: Sequence[str], per_prompt: int, seed: int = EVAL_SEED) -> tuple[Tensor, list[str]]:
    """Reference pictures for the quality metrics: ``per_prompt`` random true scenes of each prompt."""
    from .prompts import scene_for
    from .scenes import render

    generator = torch.Generator().manual_seed(seed)
    pictures, labels = [], []
    for prompt in dict.fromkeys(prompts):
        for _ in range(per_prompt):
            pictures.append(render(scene_for(prompt, generator)))
            labels.append(prompt)
    return torch.stack(pictures), labels
