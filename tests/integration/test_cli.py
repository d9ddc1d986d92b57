"""The real ``leapalign-comfy`` command as a user runs it: help, validate, convert, nodes, and every kind
of bad input ending in one clear message and a non-zero exit code (no traceback unless --verbose)."""

from __future__ import annotations

import json
import re

import pytest
from cli_harness import FIXTURE_NODES, SAMPLE_UI, TRAIN_API, TRAIN_UI, explain, run_cli, train_args


def one_error_line(proc) -> str:
    """The whole of stderr must be one ``error: ...`` line, without any traceback."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, explain(proc)
    assert lines[0].startswith("error: "), explain(proc)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    return lines[0]


def test_help_explains_each_subcommand():
    proc = run_cli("--help", script=True)
    assert proc.returncode == 0, explain(proc)
    for command in ("train", "validate", "convert", "nodes", "info"):
        assert f"\n    {command} " in proc.stdout
    assert "torchrun --nnodes 2" in proc.stdout
    train = run_cli("train", "--help")
    assert train.returncode == 0
    for option in ("--comfyui", "--custom-nodes", "--gpus", "--set", "--output", "--resume", "--verbose"):
        assert option in train.stdout


@pytest.mark.parametrize("case", ["missing", "invalid_json", "not_a_workflow", "directory"])
def test_unusable_workflow_file_is_one_line(tmp_path, case):
    path = {"missing": tmp_path / "nope.json", "directory": tmp_path}.get(case, tmp_path / "w.json")
    if case == "invalid_json":
        path.write_text('{"1": {"class_type": "KSampler",, }')
    elif case == "not_a_workflow":
        path.write_text('{"hello": "world"}')
    proc = run_cli("train", path, "--output", tmp_path / "out")
    assert proc.returncode == 2
    line = one_error_line(proc)
    expected = {"missing": f"workflow file not found: {path}", "invalid_json": "is not valid JSON: Expecting",
                "not_a_workflow": "is neither a ComfyUI workflow", "directory": "workflow path is not a file"}[case]
    assert expected in line
    assert not (tmp_path / "out").exists()  # nothing is created for a run that cannot start


def test_verbose_adds_the_traceback(tmp_path):
    proc = run_cli("train", tmp_path / "nope.json", "--verbose")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and proc.stderr.strip().endswith(f"error: workflow file not found: {tmp_path / 'nope.json'}")


def test_comfyui_path_that_is_not_comfyui(tmp_path):
    (tmp_path / "main.py").write_text("print('not comfy')\n")
    proc = run_cli("train", TRAIN_API, "--comfyui", tmp_path, "--output", tmp_path / "out")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert f"--comfyui points at {tmp_path}, which is not a ComfyUI folder (missing nodes.py" in line


def test_unknown_node_type(tmp_path):
    workflow = json.loads(TRAIN_API.read_text())
    workflow["5"]["class_type"] = "FancyRewardLoader"
    path = tmp_path / "unknown.json"
    path.write_text(json.dumps(workflow))
    proc = run_cli(*train_args(path, tmp_path / "out"))
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "unknown node type FancyRewardLoader in node 5 (FancyRewardLoader)" in line and "--custom-nodes" in line
    # ComfyUI's start-up chatter stays off the terminal; a refused run removes the output folder it created
    assert "Total VRAM" not in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()


def test_set_naming_no_node(tmp_path):
    proc = run_cli(*train_args(TRAIN_UI, tmp_path / "out", "--set", "Trainer.steps=3"))
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "--set 'Trainer.steps=3': no node has the id, title or type 'Trainer'" in line
    assert "6 'Train LoRA' (LeapAlignTrainLoRA)" in line


def test_set_naming_no_input(tmp_path):
    proc = run_cli("validate", TRAIN_API, "--custom-nodes", FIXTURE_NODES, "--set", "Train LoRA.lr=2e-5")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "node 6 'Train LoRA' (LeapAlignTrainLoRA) has no input 'lr'; its settable inputs are:" in line
    assert "learning_rate" in line


def test_validate_reports_comfyui_validation_errors_per_node(tmp_path):
    proc = run_cli("validate", SAMPLE_UI, "--custom-nodes", FIXTURE_NODES, "--set", "Sampler.steps=0",
                   "--set", "6.width=8")
    assert proc.returncode == 2, explain(proc)
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "error: workflow is invalid: Prompt outputs failed validation", explain(proc)
    assert "  node 7 'Sampler' (KSampler): Value 0 smaller than min of 1 (steps)" in lines
    assert any(line.startswith("  node 6 (EmptySD3LatentImage): Value 8 smaller than min of 16") for line in lines)
    assert "Traceback" not in proc.stderr


def test_validate_and_convert_a_good_workflow(tmp_path):
    proc = run_cli("validate", TRAIN_UI, "--custom-nodes", FIXTURE_NODES)
    assert proc.returncode == 0, explain(proc)
    assert "valid (UI format, 7 nodes); output nodes: 7 'Save LoRA' (LeapAlignSaveLoRA)" in proc.stdout
    assert proc.stderr == ""

    out = tmp_path / "api.json"
    proc = run_cli("convert", TRAIN_UI, "--custom-nodes", FIXTURE_NODES, "--set", "Train LoRA.steps=9", "-o", out)
    assert proc.returncode == 0, explain(proc)
    expected = json.loads(TRAIN_API.read_text())
    expected["6"]["inputs"]["steps"] = 9
    assert json.loads(out.read_text()) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.json"]  # no temp file left behind


def test_nodes_lists_the_pack_with_inputs():
    proc = run_cli("nodes")
    assert proc.returncode == 0, explain(proc)
    assert "LeapAlignTrain  \"LeapAlign Train LoRA\"  [LeapAlign]" in proc.stdout
    assert "LeapAlignMethodReFL  \"LeapAlign Method: ReFL\"  [LeapAlign/method]" in proc.stdout
    assert "    steps: INT (default 300, range 1..1000000)" in proc.stdout
    assert "    -> model (MODEL), lora (LEAP_LORA), metrics (LEAP_METRICS)" in proc.stdout
    listed = re.findall(r"^(\w+)  ", proc.stdout, flags=re.M)
    assert listed and all(name.startswith("LeapAlign") for name in listed)  # only this pack's nodes unless --all
    assert proc.stderr == ""
