"""Sigma grids and (k, j) sampling."""

import collections

import pytest
import torch

from leapalign.noise import per_sample_noise, step_generator
from leapalign.sigmas import check_pair, flow_sigmas, flux_sigmas, sample_pair, validate_sigmas

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flow_sigmas_uniform_and_shifted():
    assert torch.equal(flow_sigmas(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = flow_sigmas(4, shift=3.0)
    # s = 3t / (1 + 2t) at t = 0.5 -> 0.75
    assert shifted[2].item() == pytest.approx(0.75)
    assert shifted[0] == 1 and shifted[-1] == 0
    validate_sigmas(flux_sigmas(25, 720, 720))


@pytest.mark.parametrize("bad, message", [
    ([1.0, 0.5, 0.5, 0.0], "strictly decreasing"),
    ([0.0, 0.5, 1.0], "strictly decreasing"),
    ([1.0], "N >= 1"),
    ([1.0, 0.5], "must end at 0"),
    ([1.0, float("nan"), 0.0], "non-finite"),
])
def test_validate_sigmas_rejects(bad, message):
    with pytest.raises(ValueError, match=message):
        validate_sigmas(torch.tensor(bad))


def test_sample_pair_support_and_uniform_k():
    gen = torch.Generator().manual_seed(0)
    steps = 4
    pairs = collections.Counter(sample_pair(steps, gen) for _ in range(8000))
    assert set(pairs) == {(k, j) for k in range(steps) for j in range(k + 1, steps + 1)}
    k_counts = collections.Counter()
    for (k, _), n in pairs.items():
        k_counts[k] += n
    for k in range(steps):
        assert abs(k_counts[k] / 8000 - 1 / steps) < 0.03
    # j | k = 0 is uniform over 1..4
    for j in range(1, steps + 1):
        assert abs(pairs[(0, j)] / k_counts[0] - 1 / steps) < 0.05


def test_sample_pair_fixed_and_seeded():
    assert sample_pair(10, k=3, j=7) == (3, 7)
    k, j = sample_pair(10, torch.Generator().manual_seed(1), k=9)
    assert (k, j) == (9, 10)
    a = [sample_pair(25, step_generator(5, s)) for s in range(20)]
    b = [sample_pair(25, step_generator(5, s)) for s in range(20)]
    assert a == b and len(set(a)) > 10


@pytest.mark.parametrize("k, j", [(3, 3), (4, 2), (-1, 2), (0, 11)])
def test_bad_pairs(k, j):
    with pytest.raises(ValueError):
        check_pair(k, j, 10)
    with pytest.raises(ValueError):
        sample_pair(10, k=k, j=j)


def test_noise_is_per_global_sample():
    full = per_sample_noise((3, 2), seed=7, step=2, indices=[0, 1, 2, 3])
    halves = torch.cat([per_sample_noise((3, 2), 7, 2, [0, 1]), per_sample_noise((3, 2), 7, 2, [2, 3])])
    assert torch.equal(full, halves)
    assert not torch.equal(full, per_sample_noise((3, 2), 7, 3, [0, 1, 2, 3]))
