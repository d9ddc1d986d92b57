"""Image quality and diversity next to reward, so reward hacking shows: a Fréchet distance to real
pictures in a fixed feature space, and intra-prompt diversity.

Features (``picture_features``) are fixed and need no network: each picture ``[3, H, W]`` in [0, 1]
area-downsampled to 8x8 per colour channel (layout and colour, 192 values) plus the mean absolute
high-frequency residual (picture minus its 3x3 blur) in each quarter of each channel (texture: a
speckled background or grainy strokes raise it; 12 values). The Fréchet distance (FD) is the usual
``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` between Gaussian fits of the two
feature sets. Lower is closer to the real pictures; it is comparable only between sets of the same
size drawn the same way (small sets bias it upward).

Intra-prompt diversity is the mean pairwise L2 distance between the features of the samples of one
prompt, averaged over prompts; the ratio to the same number on real pictures says whether training
collapsed the samples of a prompt onto one picture (ratio well below 1) or not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

FEATURE_GRID = 8


def picture_features(pictures: Tensor) -> Tensor:
    """``[B, 204]`` float64 features of pictures ``[B, 3, H, W]`` in [0, 1] (see the module docstring)."""
    if pictures.ndim != 4 or pictures.shape[1] != 3:
        raise ValueError(f"expected pictures [B, 3, H, W] in [0, 1], got shape {tuple(pictures.shape)}")
    x = pictures.detach().double().cpu().clamp(0, 1)
    layout = F.adaptive_avg_pool2d(x, FEATURE_GRID).flatten(1)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    texture = F.adaptive_avg_pool2d((x - blur).abs(), 2).flatten(1)
    return torch.cat([layout, texture], dim=1)


def _sqrtm_psd(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Fréchet distance between Gaussian fits of two feature sets ``[n, D]`` (n >= 2 each)."""
    if features_a.shape[0] < 2 or features_b.shape[0] < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples in each set")
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * torch.trace(cross)
    return float(value.clamp_min(0))


def intra_prompt_diversity(features: Tensor, prompts: Sequence[str]) -> float:
    """Mean pairwise feature distance among samples sharing a prompt, averaged over prompts with >= 2."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    values = []
    for rows in groups.values():
        if len(rows) < 2:
            continue
        d = torch.cdist(features[rows], features[rows])
        n = len(rows)
        values.append(d.sum() / (n * (n - 1)))
    if not values:
        raise ValueError("intra-prompt diversity needs at least one prompt with 2 or more samples")
    return float(torch.stack(values).mean())


def quality_report(pictures: Tensor, prompts: Sequence[str], real: Tensor, real_prompts: Sequence[str]) -> dict:
    """``fd`` to the real set, ``diversity`` of the samples, ``real_diversity`` and their ``diversity_ratio``."""
    generated, reference = picture_features(pictures), picture_features(real)
    diversity = intra_prompt_diversity(generated, prompts)
    real_diversity = intra_prompt_diversity(reference, real_prompts)
    return {"fd": frechet_distance(generated, reference), "diversity": diversity,
            "real_diversity": real_diversity, "diversity_ratio": diversity / real_diversity}
