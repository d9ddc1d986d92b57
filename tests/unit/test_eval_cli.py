"""The graph surgery of ``leapalign-comfy eval`` on the shipped demo workflow (no ComfyUI needed)."""

import json

import pytest

from trainer_cli.errors import CLIError
from trainer_cli.eval_command import ancestors, find_anchor, parse_reward
from trainer_cli.locate import REPO_ROOT

DEMO_API = REPO_ROOT / "workflows" / "api" / "demo_digits.api.json"


def test_anchor_is_the_training_node_and_its_sources_are_kept():
    prompt = json.loads(DEMO_API.read_text())
    anchor = find_anchor(prompt)
    assert prompt[anchor]["class_type"] == "LeapAlignTrain"
    # The training node's sources: the world, the prompt list and the method/optimizer/LoRA blocks (not Save
    # LoRA, plots or the demo's evaluation).
    assert ancestors(prompt, anchor) == {anchor, "1", "2", "10", "11", "12"}
    with pytest.raises(CLIError, match="no LeapAlign Train LoRA node"):
        find_anchor({"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}})


def test_reward_arguments():
    assert parse_reward("hpsv3=HPSv3/HPSv3.safetensors") == ("hpsv3", "HPSv3/HPSv3.safetensors")
    assert parse_reward("builtin_brightness") == ("builtin_brightness", "(none: built-in reward)")
    with pytest.raises(CLIError, match="give KIND or KIND=FILE"):
        parse_reward("=x")
