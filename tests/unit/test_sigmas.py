"""Sigma grids and (k, j) sampling."""

import collections

import pytest
import torch

from leapalign.config import MethodConfig
from leapalign.noise import per_sample_noise, step_generator
from leapalign.sigmas import (
    check_pair,
    flow_sigmas,
    flux_sigmas,
    pair_probabilities,
    sample_pair,
    validate_sigmas,
)

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


def _empirical(steps, draws, **kwargs):
    gen = torch.Generator().manual_seed(0)
    counts = collections.Counter(sample_pair(steps, gen, **kwargs) for _ in range(draws))
    return {pair: n / draws for pair, n in counts.items()}


def test_released_pair_probabilities_exact_for_small_n():
    # N = 4: the six pairs of distinct evaluation steps {0, 1, 2, 3}, each 1/6; j never 4
    assert pair_probabilities(4) == pytest.approx({(0, 1): 1 / 6, (0, 2): 1 / 6, (0, 3): 1 / 6,
                                                   (1, 2): 1 / 6, (1, 3): 1 / 6, (2, 3): 1 / 6})
    # N = 3: three pairs, 1/3 each; P(k = i) = (N - 1 - i) / C(N, 2)
    assert pair_probabilities(3) == pytest.approx({(0, 1): 1 / 3, (0, 2): 1 / 3, (1, 2): 1 / 3})
    probs = pair_probabilities(25)
    k_marginal = collections.Counter()
    for (k, _), p in probs.items():
        k_marginal[k] += p
    for i in range(24):
        assert k_marginal[i] == pytest.approx((24 - i) / 300)
    assert sum(k * p for (k, _), p in probs.items()) == pytest.approx(23 / 3)  # mean k 7.67 at N = 25


def test_pseudocode_pair_probabilities_exact_for_small_n():
    # N = 3: k uniform over {0, 1, 2}, then j uniform over {k+1, ..., 3}
    assert pair_probabilities(3, "pseudocode") == pytest.approx({
        (0, 1): 1 / 9, (0, 2): 1 / 9, (0, 3): 1 / 9, (1, 2): 1 / 6, (1, 3): 1 / 6, (2, 3): 1 / 3})
    probs = pair_probabilities(25, "pseudocode")
    assert sum(k * p for (k, _), p in probs.items()) == pytest.approx(12.0)
    assert sum(p for (_, j), p in probs.items() if j == 25) == pytest.approx(0.1526, abs=1e-4)  # 15 % one-step
    released = pair_probabilities(25)
    tv = 0.5 * sum(abs(probs.get(pair, 0.0) - released.get(pair, 0.0)) for pair in probs.keys() | released.keys())
    assert tv == pytest.approx(0.29, abs=0.01)


@pytest.mark.parametrize("scheme", ["released", "pseudocode"])
def test_sample_pair_draws_the_pinned_distribution(scheme):
    expected = pair_probabilities(4, scheme)
    got = _empirical(4, 12000, scheme=scheme)
    assert set(got) == set(expected)
    for pair, p in expected.items():
        assert abs(got[pair] - p) < 0.015, (pair, got[pair], p)


def test_sample_pair_default_is_released_and_never_final():
    assert MethodConfig().pair_sampling == "released"
    got = _empirical(5, 2000)
    assert all(j <= 4 for _, j in got)
    with pytest.raises(ValueError, match="released pair sampling"):
        sample_pair(1)
    assert sample_pair(1, scheme="pseudocode") == (0, 1)


def test_pair_window_restricts_to_late_steps():
    probs = pair_probabilities(10, "released", window=0.4)  # evaluation steps 6..9
    assert set(probs) == {(k, j) for k in range(6, 10) for j in range(k + 1, 10)}
    got = _empirical(10, 3000, window=0.4)
    assert min(k for k, _ in got) == 6 and max(j for _, j in got) == 9


def test_sample_pair_fixed_and_seeded():
    assert sample_pair(10, k=3, j=7) == (3, 7)
    k, j = sample_pair(10, torch.Generator().manual_seed(1), k=8)
    assert (k, j) == (8, 9)  # released: j never the final point
    k, j = sample_pair(10, torch.Generator().manual_seed(1), k=9, scheme="pseudocode")
    assert (k, j) == (9, 10)
    with pytest.raises(ValueError, match="leaves no j"):
        sample_pair(10, k=9)
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


def test_released_defaults_are_pinned():
    cfg = MethodConfig()
    assert cfg.alpha == 0.3 and cfg.pair_sampling == "released" and cfg.pair_window == 1.0
    assert cfg.leap_steps == 2 and cfg.tau == 0.1 and cfg.weighting == "both"
    assert cfg.refl_late_fraction == 0.44 and cfg.draft_lv_copies == 2
    assert (cfg.drtune_steps, cfg.drtune_early_stop) == (3, 0.4)
    for bad in ({"pair_sampling": "paper"}, {"pair_window": 0.0}, {"leap_steps": 4}, {"drtune_early_stop": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MethodConfig(**bad)


def test_one_pair_per_update_for_every_micro_batch():
    from leapalign.types import Batch

    pairs = {sample_pair(25, Batch(["p"], [m], step=3, seed=9, micro=m).generator()) for m in range(4)}
    assert len(pairs) == 1
    others = {sample_pair(25, Batch(["p"], [0], step=s, seed=9).generator()) for s in range(12)}
    assert len(others) > 5
