"""Means, standard errors and paired differences of evaluation scores, with prompts as the unit.

The images of one prompt share that prompt, so they are not independent draws; each prompt's mean
over its images is one observation. A variant's score is the mean of its prompt means (the mean
over images when every prompt has the same number of images), its standard error the sample
standard deviation of the prompt means over sqrt(number of prompts). The difference to the base is
paired: every variant sampled each prompt from the same seeds, so the per-prompt differences are
averaged and their standard error taken the same way, which cancels the prompt-to-prompt spread.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .store import ScoreKey


@dataclass(frozen=True)
class SummaryRow:
    metric: str
    variant: str
    images: int
    prompts: int
    mean: float
    se: float  # nan with a single prompt
    diff: float | None = None  # variant - base, over the prompts both have; None for the base itself
    diff_se: float | None = None


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample standard deviation, ddof 1, over sqrt(n)); se is nan for n < 2."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def prompt_means(scores: Mapping[ScoreKey, float], variant: str, metric: str) -> tuple[dict[int, float], int]:
    """{prompt index: mean over its images}, and the number of images."""
    per_prompt: dict[int, list[float]] = defaultdict(list)
    for (v, prompt, _sample, m), value in scores.items():
        if v == variant and m == metric:
            per_prompt[prompt].append(value)
    images = sum(len(values) for values in per_prompt.values())
    return {p: math.fsum(values) / len(values) for p, values in sorted(per_prompt.items())}, images


def summarize(scores: Mapping[ScoreKey, float], variants: Sequence[str], metrics: Sequence[str]) -> list[SummaryRow]:
    """One row per (metric, variant); ``variants[0]`` is the base."""
    rows = []
    for metric in metrics:
        base, _ = prompt_means(scores, variants[0], metric)
        for i, variant in enumerate(variants):
            means, images = prompt_means(scores, variant, metric)
            if not means:
                continue
            mean, se = mean_and_se(list(means.values()))
            diff = diff_se = None
            if i > 0:
                paired = [means[p] - base[p] for p in means if p in base]
                if paired:
                    diff, diff_se = mean_and_se(paired)
            rows.append(SummaryRow(metric, variant, images, len(means), mean, se, diff, diff_se))
    return rows
