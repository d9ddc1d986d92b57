"""Every mistake is caught before the work: bad graphs, files and paths end with exit 2 and nothing written.

Each case runs the real CLI as a subprocess on the tiny fixtures; the catalogue in README.md
("What a mistake gets") lists the same cases.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_harness import FIXTURE_NODES, TRAIN_API, TRAIN_UI, cli_env, explain, run_cli, train_args

from trainer_cli.locate import REPO_ROOT

pytestmark = pytest.mark.comfy


def _edited_api(tmp_path, second_save: bool = False, **save_lora_inputs):
    prompt = json.loads(TRAIN_API.read_text())
    if second_save:  # a second, valid output branch: ComfyUI would run it and drop the bad one
        prompt["9"] = json.loads(json.dumps(prompt["7"]))
        prompt["9"]["_meta"]["title"] = "Save LoRA copy"
    prompt["7"]["inputs"].update(save_lora_inputs)
    path = tmp_path / "edited.api.json"
    path.write_text(json.dumps(prompt))
    return path


def _refused_before_work(proc, output):
    assert proc.returncode == 2, explain(proc)
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
    # Nothing ran: not even the run folder or its log is left behind. (That is the check for "before the
    # work"; the time, about 10 s of ComfyUI boot on an idle machine, is not asserted: it depends on load.)
    assert not output.exists(), sorted(output.rglob("*"))


def test_output_branch_comfyui_would_drop_is_refused(tmp_path):
    """A Save LoRA with an invalid value: ComfyUI would train and skip the save; we refuse both."""
    workflow = _edited_api(tmp_path, second_save=True, dtype="fp8")
    proc = run_cli("validate", workflow, "--custom-nodes", FIXTURE_NODES)
    assert proc.returncode == 2, explain(proc)
    # the node checks its combos itself (ComfyUI 0.3.75 does not check a V3 combo's value; nodes/widgets.py)
    assert ("node 7 'Save LoRA' (LeapAlignSaveLoRA): Custom validation failed for node (dtype - Value not in list "
            "(dtype: 'fp8' not in ['fp32', 'bf16', 'fp16'])") in proc.stderr
    output = tmp_path / "run"
    proc = run_cli(*train_args(workflow, output))
    _refused_before_work(proc, output)
    assert "some outputs failed validation" in proc.stderr


@pytest.mark.parametrize("prefix", ["../outside", "folder/"])
def test_bad_save_lora_prefix_is_refused_before_training(tmp_path, prefix):
    output = tmp_path / "run"
    proc = run_cli(*train_args(TRAIN_API, output, "--set", f"Save LoRA.filename_prefix={prefix}"))
    _refused_before_work(proc, output)
    assert "node 7 'Save LoRA' (LeapAlignSaveLoRA): Custom validation failed for node (filename_prefix - " in proc.stderr


def test_bad_run_name_is_refused_before_training(tmp_path):
    output = tmp_path / "run"
    proc = run_cli(*train_args(TRAIN_API, output, "--set", "Train LoRA.run_name=../../elsewhere"))
    _refused_before_work(proc, output)
    assert "run_name '../../elsewhere' must be a path inside" in proc.stderr


def test_incomplete_widgets_values_name_the_node(tmp_path):
    data = json.loads(TRAIN_UI.read_text())
    for node in data["nodes"]:
        if node["type"] == "LeapAlignTrainLoRA":
            node["widgets_values"] = node["widgets_values"][:11]
        if node["type"] == "LeapAlignSaveLoRA":
            node["widgets_values"] = None
    workflow = tmp_path / "short.json"
    workflow.write_text(json.dumps(data))
    output = tmp_path / "run"
    proc = run_cli(*train_args(workflow, output))
    _refused_before_work(proc, output)
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "error: the workflow file is incomplete:"
    assert lines[1].startswith("  node 6 'Train LoRA' (LeapAlignTrainLoRA) was saved with 11 widget value(s), so it "
                               "has no value for steps, batch_size, grad_accumulation, seed, width")
    assert lines[2].startswith("  node 7 'Save LoRA' (LeapAlignSaveLoRA) was saved with no widgets_values, so it has "
                               "no value for filename_prefix, dtype;")
    # --set may give the missing values instead
    proc = run_cli("validate", workflow, "--custom-nodes", FIXTURE_NODES, "--set", "7.filename_prefix=x",
                   "--set", "7.dtype=fp32", *[a for k, v in (("steps", 4), ("batch_size", 4), ("grad_accumulation", 1),
                                                              ("seed", 7), ("width", 32), ("height", 32),
                                                              ("sampling_steps", 3), ("scheduler", "simple"),
                                                              ("guidance", 3.5), ("checkpoint_every", 2),
                                                              ("run_name", "tiny_run"), ("resume", "false"))
                                              for a in ("--set", f"6.{k}={v}")])
    assert proc.returncode == 0, explain(proc)


@pytest.mark.parametrize(("content", "message"), [
    ("[" * 100000 + "]" * 100000, "nests JSON arrays or objects too deeply to read"),
    ('{"a": ' + "9" * 5000 + "}", "cannot be read as a workflow: Exceeds the limit (4300 digits)"),
])
def test_parser_limits_exit_2(tmp_path, content, message):
    workflow = tmp_path / "bad.json"
    workflow.write_text(content)
    for command in ("validate", "train"):
        proc = run_cli(command, workflow, *(["--output", tmp_path / "run"] if command == "train" else []))
        assert proc.returncode == 2, explain(proc)
        assert proc.stderr.startswith(f"error: {workflow} {message}"), explain(proc)
    assert not (tmp_path / "run").exists()


def test_demo_output_that_is_a_file_is_a_clean_error(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "trainer_cli.demo", "--output", str(target)], capture_output=True,
                          text=True, timeout=300, cwd=REPO_ROOT, env=cli_env())
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip() == f"error: --output {target} is a file; give a folder for the run (new or existing)"
    assert target.read_text() == "keep me"
    proc = subprocess.run([sys.executable, "-m", "trainer_cli.demo", "--resume"], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT, env=cli_env())
    assert proc.returncode == 2 and "--resume needs --output" in proc.stderr and "Traceback" not in proc.stderr
