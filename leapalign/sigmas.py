"""Sigma grids and the (k, j) pair of grid points a LeapAlign step trains on.

A grid is a 1-D tensor ``s_0 > s_1 > ... > s_N = 0`` of any spacing (Flux's resolution-shifted
schedule included); ``N = len(sigmas) - 1`` Euler steps. Grid index 0 is pure noise, index N the
final sample.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def validate_sigmas(sigmas: Tensor | list[float] | tuple[float, ...]) -> Tensor:
    """Return ``sigmas`` as a 1-D tensor after checking it is a usable flow grid.

    Raises ``ValueError`` for fewer than 2 entries (N < 1 step), non-finite values, a grid that is
    not strictly decreasing, or a last entry that is not 0 (the leap to the end assumes ``s_N = 0``).
    """
    if not isinstance(sigmas, Tensor):
        sigmas = torch.tensor(sigmas, dtype=torch.float32)
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be a 1-D tensor, got shape {tuple(sigmas.shape)}")
    if not sigmas.is_floating_point():
        raise ValueError(f"sigmas must be floating point, got {sigmas.dtype}")
    if sigmas.numel() < 2:
        raise ValueError(f"sigmas has {sigmas.numel()} entries, i.e. N = {sigmas.numel() - 1} steps; "
                         "a rollout needs N >= 1 (at least 2 sigmas ending at 0)")
    if not torch.isfinite(sigmas).all():
        raise ValueError(f"sigmas contain non-finite values: {sigmas.tolist()}")
    steps = sigmas[1:] - sigmas[:-1]
    if (steps >= 0).any():
        bad = int(torch.nonzero(steps >= 0)[0])
        raise ValueError(f"sigmas must be strictly decreasing; sigmas[{bad}] = {float(sigmas[bad]):.6g} "
                         f"<= sigmas[{bad + 1}] = {float(sigmas[bad + 1]):.6g}")
    if float(sigmas[-1]) != 0.0:
        raise ValueError(f"sigmas must end at 0 (the clean sample), got last sigma {float(sigmas[-1]):.6g}; "
                         "append 0 or use a full denoising schedule")
    return sigmas


def n_steps(sigmas: Tensor) -> int:
    return int(sigmas.numel()) - 1


def flow_sigmas(steps: int, shift: float = 1.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """A flow-matching grid from 1 to 0 with ``steps`` Euler steps.

    ``shift = 1`` is uniform; ``shift > 1`` spends more steps at high noise, the SD3/Flux time shift
    ``s = shift t / (1 + (shift - 1) t)`` (Flux's resolution-dependent shift is ``shift = exp(mu)``).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    s = shift * t / (1.0 + (shift - 1.0) * t)
    return s.to(dtype)


def uniform_sigmas(steps: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return flow_sigmas(steps, 1.0, dtype)


def flux_sigmas(steps: int, width: int, height: int, base_shift: float = 0.5, max_shift: float = 1.15,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Flux.1-dev's schedule for an image size (mu interpolated over 256..4096 latent tokens)."""
    tokens = (width // 16) * (height // 16)
    mu = base_shift + (max_shift - base_shift) * (tokens - 256) / (4096 - 256)
    return flow_sigmas(steps, math.exp(mu), dtype)


def check_pair(k: int, j: int, steps: int) -> tuple[int, int]:
    """Validate grid indices ``0 <= k < j <= N``; raises ``ValueError`` naming the bad index."""
    if steps < 1:
        raise ValueError(f"N must be >= 1, got {steps}")
    k, j = int(k), int(j)
    if not 0 <= k <= steps - 1:
        raise ValueError(f"k = {k} is outside 0..{steps - 1} (k indexes the grid point the first leap starts from)")
    if not k < j:
        raise ValueError(f"need k < j, got k = {k} >= j = {j}")
    if j > steps:
        raise ValueError(f"j = {j} is outside {k + 1}..{steps} (N = {steps})")
    return k, j


PAIR_SAMPLING = ("released", "pseudocode")


def pair_probabilities(steps: int, scheme: str = "released", window: float = 1.0) -> dict[tuple[int, int], float]:
    """Exact ``P(k, j)`` of :func:`sample_pair` with nothing fixed (what the unit tests pin).

    ``released``: two distinct evaluation steps of the last ``L`` (``L = N`` for the full range), each
    unordered pair equally likely, so ``P(k, j) = 2 / (L (L - 1))`` for ``N - L <= k < j <= N - 1``.
    ``pseudocode``: ``P(k, j) = 1 / (L (N - k))`` for ``N - L <= k < j <= N``.
    """
    low = window_start(steps, window)
    size = steps - low
    if scheme == "released":
        _need_two(size, steps, window)
        return {(k, j): 2.0 / (size * (size - 1)) for k in range(low, steps) for j in range(k + 1, steps)}
    if scheme == "pseudocode":
        return {(k, j): 1.0 / (size * (steps - k)) for k in range(low, steps) for j in range(k + 1, steps + 1)}
    raise ValueError(f"pair sampling must be one of {PAIR_SAMPLING}, got {scheme!r}")


def window_start(steps: int, window: float = 1.0) -> int:
    """First evaluation step of the last ``window`` fraction of the ``N`` steps (``window = 1``: 0)."""
    if not 0.0 < float(window) <= 1.0:
        raise ValueError(f"the pair window must be a fraction in (0, 1], got {window}")
    return steps - max(1, math.ceil(float(window) * steps - 1e-9))


def _need_two(size: int, steps: int, window: float) -> None:
    if size < 2:
        raise ValueError(f"released pair sampling draws two distinct evaluation steps, but the window "
                         f"{window} of N = {steps} holds {size}; use more sampling steps, a wider window, "
                         "or pair_sampling='pseudocode'")


def sample_pair(steps: int, generator: torch.Generator | None = None, k: int | None = None,
                j: int | None = None, scheme: str = "released", window: float = 1.0) -> tuple[int, int]:
    """Draw the leap's grid points (k, j) with ``k < j``; grid index 0 is noise, N the final sample.

    ``released`` (the default, the authors' released code): the first two entries of a random
    permutation of the evaluation steps {0, ..., N-1}, k the noisier; j is never the final point N,
    so every leap makes two velocity evaluations, and ``P(k = i)`` is proportional to ``N - 1 - i``.
    ``pseudocode`` (the paper's algorithm box): k uniform over {0, ..., N-1}, then j uniform over
    {k+1, ..., N}; ``j = N`` is a one-step leap. ``window < 1`` restricts both to the last ``window``
    fraction of the evaluation steps (the paper's partial-range ablation).

    Passing ``k`` and/or ``j`` fixes that index (for inspection); the other is drawn uniformly from
    the indices the scheme allows given it.
    """
    if steps < 1:
        raise ValueError(f"N must be >= 1, got {steps}")
    if scheme not in PAIR_SAMPLING:
        raise ValueError(f"pair sampling must be one of {PAIR_SAMPLING}, got {scheme!r}")
    low = window_start(steps, window)
    last_j = steps - 1 if scheme == "released" else steps
    if k is None and j is None and scheme == "released":
        _need_two(steps - low, steps, window)
        first, second = (low + torch.randperm(steps - low, generator=generator)[:2]).tolist()
        return check_pair(min(first, second), max(first, second), steps)
    if k is None:
        hi = steps - 1 if j is None else int(j) - 1
        if hi < low:
            raise ValueError(f"j = {j} leaves no valid k (need {low} <= k < j)")
        k = int(torch.randint(low, hi + 1, (1,), generator=generator))
    if j is None:
        if not 0 <= int(k) <= steps - 1:
            raise ValueError(f"k = {k} is outside 0..{steps - 1}")
        if int(k) + 1 > last_j:
            raise ValueError(f"k = {k} leaves no j for {scheme} pair sampling (j must be in {int(k) + 1}..{last_j})")
        j = int(torch.randint(int(k) + 1, last_j + 1, (1,), generator=generator))
    return check_pair(k, j, steps)
