"""``--set`` reaches settings that moved from the training node onto the blocks linked into it."""

from __future__ import annotations

import pytest

from trainer_cli.errors import CLIError
from trainer_cli.overrides import apply_overrides

INFO = {
    "LeapAlignTrain": {"input": {"required": {"steps": ["INT", {}], "model": ["MODEL", {}]},
                                 "optional": {"method": ["LEAP_METHOD", {}], "optimizer": ["LEAP_OPTIMIZER", {}]}}},
    "LeapAlignMethod": {"input": {"required": {"alpha": ["FLOAT", {}], "hinge_lambda": ["FLOAT", {}]}}},
    "LeapAlignMethodReFL": {"input": {"required": {"late_fraction": ["FLOAT", {"default": 0.44}],
                                                   "hinge_lambda": ["FLOAT", {"default": -1.0}]}}},
    "LeapAlignOptimizer": {"input": {"required": {"learning_rate": ["FLOAT", {}]}}},
}


def _prompt() -> dict:
    return {
        "6": {"class_type": "LeapAlignTrain", "_meta": {"title": "Train LoRA (LeapAlign)"},
              "inputs": {"steps": 300, "model": ["1", 0], "method": ["17", 0], "optimizer": ["18", 0]}},
        "17": {"class_type": "LeapAlignMethod", "inputs": {"alpha": 0.3, "hinge_lambda": -1.0}},
        "18": {"class_type": "LeapAlignOptimizer", "inputs": {"learning_rate": 1e-5}},
    }


def test_a_setting_on_a_linked_block_is_set_there():
    prompt = apply_overrides(_prompt(), ["Train LoRA (LeapAlign).learning_rate=2e-5", "6.alpha=0.5",
                                         "LeapAlignTrainLoRA.steps=40"], INFO)
    assert prompt["18"]["inputs"]["learning_rate"] == 2e-5
    assert prompt["17"]["inputs"]["alpha"] == 0.5
    assert prompt["6"]["inputs"]["steps"] == 40  # the old node type name finds the new training node
    assert "learning_rate" not in prompt["6"]["inputs"] and "alpha" not in prompt["6"]["inputs"]


def test_an_input_no_linked_block_has_is_still_refused():
    with pytest.raises(CLIError, match="has no input 'tau'"):
        apply_overrides(_prompt(), ["6.tau=0.2"], INFO)


def test_setting_the_method_swaps_the_method_block():
    prompt = _prompt()
    prompt["17"]["inputs"]["hinge_lambda"] = 0.6
    apply_overrides(prompt, ['Train LoRA (LeapAlign).method=refl'], INFO)
    assert prompt["17"] == {"class_type": "LeapAlignMethodReFL", "inputs": {"late_fraction": 0.44, "hinge_lambda": 0.6}}
    assert prompt["6"]["inputs"]["method"] == ["17", 0]
    with pytest.raises(CLIError, match="'dpo' is not a method; choose one of leapalign, refl"):
        apply_overrides(_prompt(), ["6.method=dpo"], INFO)
