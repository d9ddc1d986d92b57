"""scikit-learn's bundled handwritten digits (1797 images, 8x8, no download) as the world's data.

Pictures are dark ink on white paper: pixel values in [-1, 1] with paper at +1, at the data set's own
8x8 resolution (what the codec's latent holds). The data is split once, by a fixed
seed, into disjoint parts so that the reward classifier and the judge never see the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .codec import DIGIT_SIZE

SPLIT_SEED = 20261125
SPLIT_FRACTIONS = {"reward": 0.45, "judge": 0.45, "test": 0.10}


@dataclass(frozen=True)
class DigitsData:
    """``images`` ``[N, 1, 8, 8]`` in [-1, 1] (ink dark), ``labels`` ``[N]`` int64."""

    images: Tensor
    labels: Tensor

    def subset(self, index: Tensor) -> DigitsData:
        return DigitsData(self.images[index], self.labels[index])

    def __len__(self) -> int:
        return int(self.labels.numel())


def load_digits_data() -> DigitsData:
    """All 1797 digits, in scikit-learn's order."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # the demo extra
        raise ImportError("the digits world needs scikit-learn (pip install 'leapalign-comfy[demo]')") from exc
    bunch = load_digits()
    ink = torch.from_numpy(bunch.images.astype("float32")).unsqueeze(1) / 16.0
    paper = 1.0 - 2.0 * ink
    if paper.shape[-2:] != (DIGIT_SIZE, DIGIT_SIZE):
        raise ValueError(f"scikit-learn's digits are {tuple(paper.shape[-2:])}, the world expects {DIGIT_SIZE}x{DIGIT_SIZE}")
    return DigitsData(paper.contiguous(), torch.from_numpy(bunch.target.astype("int64")))


def split_indices(n: int, seed: int = SPLIT_SEED) -> dict[str, Tensor]:
    """Disjoint index sets ``reward``, ``judge``, ``test`` covering ``range(n)`` (fixed permutation)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = {}, 0
    names = list(SPLIT_FRACTIONS)
    for i, name in enumerate(names):
        stop = n if i == len(names) - 1 else start + round(SPLIT_FRACTIONS[name] * n)
        out[name] = order[start:stop].sort().values
        start = stop
    return out
