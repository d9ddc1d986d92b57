"""Quality and diversity metrics: the Fréchet distance and intra-prompt diversity react to what they should."""

from __future__ import annotations

import pytest
import torch

from leapalign.quality import frechet_distance, intra_prompt_diversity, picture_features, quality_report
from leapalign.shapes.evaluate import real_scenes
from leapalign.shapes.prompts import all_prompts

pytestmark = pytest.mark.usefixtures("one_thread")


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(20000, 3, generator=gen, dtype=torch.float64) * 2.0 + torch.tensor([1.0, 0.0, 0.0],
                                                                                     dtype=torch.float64)
    # |mu|^2 = 1; per dimension (1 + 4 - 2 * 2) = 1 -> 1 + 3 = 4
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fd_sees_a_speckled_background_and_diversity_sees_collapse():
    prompts = all_prompts()[:30]
    real, real_prompts = real_scenes(prompts, 8, seed=1)
    other, other_prompts = real_scenes(prompts, 8, seed=2)
    clean = quality_report(other, other_prompts, real, real_prompts)
    speckled = other + 0.25 * torch.rand(other.shape, generator=torch.Generator().manual_seed(3))
    noisy = quality_report(speckled.clamp(0, 1), other_prompts, real, real_prompts)
    assert noisy["fd"] > 3 * clean["fd"]
    assert clean["diversity_ratio"] == pytest.approx(1.0, abs=0.15)
    collapsed = torch.stack([other[other_prompts.index(p)] for p in other_prompts])   # one picture per prompt
    assert intra_prompt_diversity(picture_features(collapsed), other_prompts) == pytest.approx(0.0, abs=1e-9)
    assert quality_report(collapsed, other_prompts, real, real_prompts)["diversity_ratio"] < 0.01
    with pytest.raises(ValueError, match="2 or more samples"):
        intra_prompt_diversity(picture_features(other[:3]), ["a", "b", "c"])
