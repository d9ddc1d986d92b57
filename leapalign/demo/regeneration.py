"""How to tell that a regenerated digits world is the recorded one, on any CPU.

Regenerating the world (``scripts/make_demo_world.py``) is deterministic, but its bits are only
reproducible on the CPU/torch combination that recorded them: torch and oneDNN pick kernels by
instruction set (AVX2, AVX-512, ...), and different kernels round sums in a different order. Forcing
``ATEN_CPU_CAPABILITY=avx2`` instead of AVX-512 on one machine moves the shortened run's weights by
up to about 5e-5 of their norm. So the record holds two things:

* the SHA-256 of each file and the identity of the machine that wrote them (:func:`platform_identity`),
  compared only where the identity is the same;
* a numeric fingerprint of each tensor (:func:`fingerprint`: its norm and its projection on a fixed
  random direction), compared everywhere with a relative tolerance of 1e-3 of the tensor's norm:
  20x the measured cross-instruction-set drift, while a changed recipe, seed or data moves every
  tensor by an amount of the order of the tensor itself.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

FINGERPRINT_RTOL = 1e-3
"""Allowed fingerprint drift, relative to the tensor's norm (see the module docstring)."""
ACCURACY_TOL = 0.02
"""Allowed drift of a classifier's recorded test accuracy (a handful of the ~450 test digits)."""


def platform_identity() -> dict[str, str]:
    """What decides the bits of a CPU computation here: torch build, its kernel level, the CPU model."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
            "machine": platform.machine(), "cpu_model": model}


def _probe(numel: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(numel)
    probe = torch.randn(numel, generator=generator, dtype=torch.float64)
    return probe / probe.norm()


def fingerprint(path: str | Path) -> dict:
    """``{tensor: [norm, projection]}`` for the float tensors of a safetensors file, plus its metadata."""
    from safetensors import safe_open

    out: dict[str, list[float]] = {}
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
        for key in sorted(handle.keys()):
            tensor = handle.get_tensor(key)
            if not tensor.is_floating_point():
                continue
            flat = tensor.detach().double().flatten()
            out[key] = [float(flat.norm()), float(flat @ _probe(flat.numel()))]
    note = json.loads(metadata.get("leapalign.demo", "{}"))
    return {"tensors": out, "test_accuracy": note.get("test_accuracy")}


def fingerprint_differences(expected: dict, got: dict, rtol: float = FINGERPRINT_RTOL) -> list[str]:
    """Human-readable mismatches between two fingerprints (empty when they agree within tolerance)."""
    problems = []
    want, have = expected["tensors"], got["tensors"]
    if sorted(want) != sorted(have):
        return [f"tensor names differ: {sorted(set(want) ^ set(have))[:5]}"]
    for key, (norm, proj) in want.items():
        new_norm, new_proj = have[key]
        allowed = rtol * max(norm, 1e-6)
        if abs(new_norm - norm) > allowed or abs(new_proj - proj) > allowed:
            problems.append(f"{key}: norm {new_norm:.6g} vs {norm:.6g}, projection {new_proj:.6g} vs {proj:.6g} "
                            f"(allowed {allowed:.2g})")
    acc_want, acc_have = expected.get("test_accuracy"), got.get("test_accuracy")
    if acc_want is not None and (acc_have is None or abs(acc_have - acc_want) > ACCURACY_TOL):
        problems.append(f"test accuracy {acc_have} vs recorded {acc_want}")
    return problems
