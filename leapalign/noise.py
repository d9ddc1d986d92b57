"""Deterministic randomness keyed by (seed, step, sample): the same global batch on any number of ranks.

Noise for a sample depends only on ``(seed, step, global sample index)`` and is drawn on the CPU in
float32 before any cast or device move, so one rank with batch 4 and two ranks with batch 2 each
start from identical latents, and CPU and GPU runs share their noise. Method randomness such as the
(k, j) pair comes from a generator keyed by ``(seed, step)``, identical on every rank and micro-batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings (a stable hash, not Python's salted ``hash``)."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seeded_generator(*parts: int | str) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(derive_seed(*parts))
    return generator


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """Generator for per-micro-batch method randomness; identical on every data-parallel rank."""
    return seeded_generator("method", int(seed), int(step), int(micro))


def sample_noise(shape: Sequence[int], seed: int, step: int, index: int) -> Tensor:
    """Standard normal noise of ``shape`` (float32, CPU) for one global sample."""
    return torch.randn(tuple(shape), generator=seeded_generator("noise", int(seed), int(step), int(index)))


def per_sample_noise(shape: Sequence[int], seed: int, step: int, indices: Iterable[int],
                     dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Stack :func:`sample_noise` over ``indices`` into ``[len(indices), *shape]``."""
    indices = list(indices)
    if not indices:
        raise ValueError("per_sample_noise needs at least one sample index")
    noise = torch.stack([sample_noise(shape, seed, step, i) for i in indices])
    return noise.to(dtype=dtype, device=device)
