"""The benchmark's own measuring instruments give exact, hand-checkable numbers (no ComfyUI needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.append(str(Path(__file__).resolve().parents[2]))  # bench/ lives at the repo root, not installed

from bench.comfy_env import saved_bytes_meter
from bench.digits import cost_per_update
from bench.memory import reset_peak_rss


def test_saved_bytes_counts_unique_storages_and_splits_weights():
    x = torch.randn(1000, requires_grad=True)
    w = torch.randn(1000, requires_grad=True)
    with saved_bytes_meter({w.untyped_storage().data_ptr()}) as stats:
        y = x.sin() + x.cos()  # both save x: one storage, counted once
        z = (y * w).sum()      # saves y (new activation) and w (a weight)
    assert stats["activation_bytes"] == 4000 + 4000
    assert stats["weight_bytes"] == 4000
    z.backward()
    assert x.grad is not None


def test_nothing_is_saved_without_grad():
    x = torch.randn(100)
    with saved_bytes_meter(set()) as stats:
        x.sin().exp()
    assert stats == {"activation_bytes": 0, "weight_bytes": 0, "tensors": 0}


@pytest.mark.parametrize("steps", [4, 8, 25])
def test_cost_per_update(steps):
    assert cost_per_update({"name": "full_backprop"}, steps) == 3 * steps
    assert cost_per_update({"name": "leapalign", "j": steps}, steps) == steps + 3
    two_step = cost_per_update({"name": "leapalign"}, steps)
    assert steps + 3 < two_step < steps + 6
    assert cost_per_update({"name": "drtune"}, steps) == steps + 3 * min(5, steps)


def test_peak_rss_reset_is_available_on_linux():
    assert reset_peak_rss() in (True, False)
