"""The benchmark's own measuring instruments give exact, hand-checkable numbers (no ComfyUI needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.append(str(Path(__file__).resolve().parents[2]))  # bench/ lives at the repo root, not installed

from bench.comfy_env import saved_bytes_meter
from bench.digits import Arm, cost_per_update, equal_compute_updates, separation, verdict, weight_stats
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
    for leaps in (1, 2, 3):   # released pairs never end on x_N: exactly `leaps` evaluations with grad
        assert cost_per_update({"name": "leapalign", "leap_steps": leaps}, steps) == steps + 3 * leaps
    pseudo = cost_per_update({"name": "leapalign", "pair_sampling": "pseudocode"}, steps)
    assert steps + 3 < pseudo < steps + 6   # j = N (one evaluation) with probability > 0
    assert cost_per_update({"name": "drtune", "drtune_early_stop": 0.0, "drtune_steps": 5}, steps) == \
        steps + 3 * min(5, steps)


def test_peak_rss_reset_is_available_on_linux():
    assert reset_peak_rss() in (True, False)


def _arm(judge: float, sd: float, n: int = 4) -> dict:
    return {"judge_accuracy": judge, "judge_accuracy_std": sd, "n": n}


def test_separation_is_the_difference_in_standard_errors_of_the_seed_means():
    # se = sqrt(0.04^2 / 4 + 0.03^2 / 4) = 0.025
    assert separation(_arm(0.7, 0.04), _arm(0.6, 0.03)) == pytest.approx(4.0)
    assert separation(_arm(0.6, 0.03), _arm(0.7, 0.04)) == pytest.approx(-4.0)


def test_equal_compute_gives_each_method_leapalign_budget():
    steps, updates = 8, 40
    budget = cost_per_update({"name": "leapalign"}, steps) * updates
    # released settings at N = 8: DRTune stops at 4..7 (mean 5.5) and trains 3 steps; ReFL starts at 4..7
    assert cost_per_update({"name": "leapalign"}, steps) == 14
    for method, expected_cost in (("full_backprop", 24), ("drtune", 15.5), ("refl", 8.5), ("draft_lv", 16)):
        arm = Arm(method, {"name": method}, "methods")
        assert cost_per_update(arm.method, steps) == expected_cost
        assert equal_compute_updates(arm, steps, updates) == round(budget / expected_cost)


def test_weight_stats_counts_capped_weights():
    # tau = 0.1 caps w at 5; batches [5, 2.5] and [5, 5]: 3 of 4 capped, max/min 2 and 1
    stats = weight_stats([{"weights": [5.0, 2.5]}, {"weights": [5.0, 5.0]}, {"reward": -1.0}], tau=0.1)
    assert stats == {"weight_capped_share": 0.75, "weight_max_over_min": 1.5}
    assert weight_stats([{"reward": -1.0}]) == {}


def test_verdict_separates_equal_updates_from_equal_compute():
    def row(judge, sd=0.01, evals=2.0, cost=13.0, updates=40):
        return {**_arm(judge, sd), "reward": judge - 2, "reward_std": 0.1, "grad_evals_per_update": evals,
                "cost_per_update": cost, "updates": updates}

    result = {"updates": 40, "summary": {"LeapAlign": row(0.65), "DRTune": row(0.80, evals=5.0, cost=23.0),
                                         "ReFL": row(0.50), "late-only (k, j)": row(0.45)},
              "equal_compute_summary": {"DRTune @ equal compute": row(0.60, updates=23),
                                        "ReFL @ equal compute": row(0.55, updates=55)}}
    v = verdict(result)
    assert v["ordering"] == "**The paper's ordering reproduces at equal compute, not at equal updates.**"
    assert "DRTune > LeapAlign > ReFL" in v["ranking"]
    assert "DRTune backpropagates through 5.0 velocity calls" in v["why_behind"]
    assert "early steps matter here" in v["early_steps"]


def test_fidelity_page_has_per_category_columns_and_standard_errors(tmp_path, monkeypatch):
    from bench import fidelity

    monkeypatch.setattr(fidelity, "OUT", tmp_path)

    def row(overall, group="methods", n=4, updates=40):
        out = {"n": n, "group": group, "updates": updates, "cost_per_update": 16.0, "judge_accuracy": overall,
               "judge_accuracy_std": 0.02, "reward": -2.0, "reward_std": 0.2, "fd": 3.0, "fd_std": 0.4,
               "diversity_ratio": 0.9, "diversity_ratio_std": 0.04, "grad_evals_per_update": 2.0}
        out.update({f"cat_{c}": overall for c in fidelity.CATS})
        out.update({f"cat_{c}_std": 0.02 for c in fidelity.CATS})
        return out

    base = {"judge_accuracy": 0.25, "reward": -7.0, "fd": 5.0, "diversity_ratio": 1.1,
            **{f"cat_{c}": 0.25 for c in fidelity.CATS}}
    result = {"available": True, "seeds": [0, 1, 2, 3], "updates": 40, "batch": 16, "lr": 1e-3, "lora_rank": 8,
              "steps": 10, "eval_samples": 252, "pretrained": base,
              "summary": {"LeapAlign": row(0.6), "ReFL": row(0.5), "alpha = 0": row(0.55, "alpha")},
              "equal_compute_summary": {"ReFL @ equal compute": row(0.52, updates=70)}}
    page = fidelity.render({"command": "python -m bench.fidelity", "seconds": 60.0,
                            "machine": {"cpu_model": "x", "cpus_usable": 2, "loadavg": [1.0, 1.0, 1.0]},
                            "budget": {"command": "python -m bench.fidelity --budget-check 36", "seconds": 300.0,
                                       "seeds": [0, 1], "updates": 36,
                                       "summary": {"LeapAlign": row(0.7, updates=36), "ReFL": row(0.5, updates=36)}},
                            "shapes": result, "probe": {"samples": 3, "kept": {0: {"layout": 0.2, "composition": 0.1},
                                                                           9: {"layout": 1.0, "composition": 0.9}},
                                                        "sigmas": [1.0] + [0.5] * 8 + [0.1, 0.0]}})
    assert "| arm | updates | overall | single_object | two_object | counting | colors | position | color_attr |" in page
    # SE = sd / sqrt(n) = 0.02 / 2
    assert "| LeapAlign | 40 | 0.600 ± 0.010 |" in page and "ReFL @ equal compute | 70 |" in page
    assert "| LeapAlign | 36 | 4 | 0.700 ± 0.010 |" in page and "- At 36 updates: LeapAlign ahead of ReFL" in page
    assert "| layout kept | 0.20 | 1.00 |" in page and "| composition kept | 0.10 | 0.90 |" in page and (tmp_path / "fidelity_shapes.png").is_file()
