"""``leapalign-comfy train --memory-preset`` becomes a --set on the training node's memory_preset input."""

from __future__ import annotations

import pytest

from trainer_cli.main import build_parser, memory_preset_override
from trainer_cli.overrides import parse_override


def test_memory_preset_flag_becomes_a_set_on_the_training_node():
    args = build_parser().parse_args(["train", "w.json", "--memory-preset", "fit 24 GB", "--set", "3.steps=4"])
    memory_preset_override(args)
    assert args.set[0] == "3.steps=4"
    override = parse_override(args.set[-1])
    assert (override.node, override.input, override.text) == ("LeapAlignTrainLoRA", "memory_preset", "fit 24 GB")


def test_memory_preset_flag_rejects_unknown_presets_and_is_optional(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "w.json", "--memory-preset", "fit 7 GB"])
    assert "fit 24 GB" in capsys.readouterr().err
    args = build_parser().parse_args(["train", "w.json"])
    memory_preset_override(args)
    assert args.set == []


def test_monitor_prints_the_memory_plan_event():
    import io

    from trainer_cli.console import Console
    from trainer_cli.progress import MEMORY_PLAN_EVENT, TrainingMonitor

    console = Console()
    console.out = io.StringIO()
    monitor = TrainingMonitor(console, {"6": "Train LoRA"}, min_interval_s=0)
    monitor.on_event(MEMORY_PLAN_EVENT, {"text": "LeapAlign memory plan: ...\n  predicted peak  20.04 GiB"})
    monitor.on_event(MEMORY_PLAN_EVENT, {"text": None})  # malformed: ignored
    assert console.out.getvalue() == "LeapAlign memory plan: ...\n  predicted peak  20.04 GiB\n"
