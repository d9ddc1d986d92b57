"""The CLI's workflow handling in-process (ComfyUI booted once): format detection, UI -> API
conversion with the in-process object_info, ``--set`` resolution and typing, run-folder rules."""

from __future__ import annotations

import copy
import json

import pytest
from cli_harness import SAMPLE_API, SAMPLE_UI, TRAIN_API, TRAIN_UI

from trainer_cli.errors import CLIError
from trainer_cli.overrides import apply_overrides, parse_override
from trainer_cli.workflow import (
    API_FORMAT,
    UI_FORMAT,
    read_workflow,
    to_api_prompt,
    unknown_node_types,
    workflow_format,
)


@pytest.fixture(scope="module")
def object_info(comfy):
    from trainer_cli.object_info import build_object_info

    return build_object_info()


@pytest.fixture
def train_prompt():
    return to_api_prompt(read_workflow(TRAIN_API))


def test_object_info_matches_what_the_server_would_serve(object_info):
    import nodes as comfy_nodes

    assert set(object_info) == set(comfy_nodes.NODE_CLASS_MAPPINGS)
    train = object_info["LeapAlignTrain"]
    assert train["display_name"] == "LeapAlign Train LoRA" and train["category"] == "LeapAlign"
    assert train["input_order"]["required"][:5] == ["model", "clip", "vae", "reward", "prompts"]
    assert train["input_order"]["optional"][:3] == ["method", "optimizer", "lora_settings"]
    assert list(train["output"]) == ["MODEL", "LEAP_LORA", "LEAP_METRICS"] and train["output_node"] is False
    assert list(train["output_name"]) == ["model", "lora", "metrics"]
    assert object_info["LeapAlignTrainLoRA"]["deprecated"] is True  # the all-in-one node: loads, not offered
    assert object_info["LeapAlignSaveLoRA"]["output_node"] is True
    # a V3 (comfy_api) node goes through its own schema, as in server.py
    assert object_info["EmptySD3LatentImage"]["input"]["required"]["width"][0] == "INT"
    json.dumps(object_info)  # what /object_info would send must be JSON


@pytest.mark.parametrize(("ui", "api"), [(TRAIN_UI, TRAIN_API), (SAMPLE_UI, SAMPLE_API)])
def test_ui_workflow_converts_to_its_api_twin(object_info, ui, api):
    data = read_workflow(ui)
    assert workflow_format(data) == UI_FORMAT and workflow_format(read_workflow(api)) == API_FORMAT
    converted = to_api_prompt(data, object_info)
    assert converted == json.loads(api.read_text())
    # control_after_generate companions ("fixed") were dropped, not read as the next widget
    assert converted["1"]["inputs"] == {"seed": 0}
    # the Note node exists only in the UI
    assert {n["type"] for n in data["nodes"]} - {n["class_type"] for n in converted.values()} == {"Note"}


def test_unknown_node_types_are_named_in_both_formats(comfy):
    import nodes as comfy_nodes

    api = json.loads(TRAIN_API.read_text())
    api["6"]["class_type"] = "LeapAlignTrainLoRAv9"
    assert unknown_node_types(api, comfy_nodes.NODE_CLASS_MAPPINGS) == {"6": "LeapAlignTrainLoRAv9"}
    ui = json.loads(TRAIN_UI.read_text())
    ui["nodes"][0]["type"] = "MissingLoader"
    assert unknown_node_types(ui, comfy_nodes.NODE_CLASS_MAPPINGS) == {"1": "MissingLoader"}


def test_set_by_id_title_and_type_with_declared_types(train_prompt, object_info):
    apply_overrides(train_prompt, ["6.steps=40", "Train LoRA.learning_rate=2e-5", "LeapAlignSaveLoRA.dtype=bf16",
                                   "Prompts.text=123", "6.resume=true", "Train LoRA.run_name=\"quoted name\"",
                                   "6.ema_decay=0", "Reward.kind=builtin_color_target"], object_info)
    train = train_prompt["6"]["inputs"]
    assert train["steps"] == 40 and type(train["steps"]) is int
    assert train["learning_rate"] == 2e-5
    assert train["resume"] is True
    assert train["run_name"] == "quoted name"
    assert train["ema_decay"] == 0.0 and type(train["ema_decay"]) is float
    assert train_prompt["7"]["inputs"]["dtype"] == "bf16"
    assert train_prompt["4"]["inputs"]["text"] == "123"  # a STRING input keeps the text as written
    assert train_prompt["5"]["inputs"]["kind"] == "builtin_color_target"


def test_set_can_fill_an_optional_input_absent_from_the_prompt(train_prompt, object_info):
    del train_prompt["4"]["inputs"]["file"]
    apply_overrides(train_prompt, ["Prompts.file=prompts.txt"], object_info)
    assert train_prompt["4"]["inputs"]["file"] == "prompts.txt"


@pytest.mark.parametrize(("spec", "message"), [
    ("steps=3", "expected NODE.INPUT=VALUE"),
    ("6.steps", "expected NODE.INPUT=VALUE"),
    ("Nope.steps=3", "no node has the id, title or type 'Nope'. Nodes: 1 'Tiny Flux' (TinyFluxModelLoader);"),
    ("6.stepz=3", "has no input 'stepz'; its settable inputs are: method, alpha,"),
    ("6.steps=many", "'steps' takes a whole number, got 'many'"),
    ("6.steps=2.5", "'steps' takes a whole number"),
    ("6.alpha=high", "'alpha' takes a number"),
    ("6.resume=yes", "'resume' takes true or false"),
    ("6.method=magic", "'magic' is not one of the choices for 'method': leapalign, refl"),
    ("6.model=1", "input 'model' of node 6 'Train LoRA' (LeapAlignTrainLoRA) is connected to node 1"),
    ("6.steps=[1, 2]", "not a JSON list"),
])
def test_bad_set_is_a_clear_error(train_prompt, object_info, spec, message):
    before = copy.deepcopy(train_prompt)
    with pytest.raises(CLIError) as info:
        apply_overrides(train_prompt, [spec], object_info)
    assert message in str(info.value)
    assert info.value.exit_code == 2
    assert train_prompt == before


def test_ambiguous_title_asks_for_the_id(train_prompt, object_info):
    train_prompt["3"]["_meta"]["title"] = "Tiny Flux"
    with pytest.raises(CLIError, match=r"2 nodes have the title 'Tiny Flux' \(ids 1, 3\); name one by its id"):
        apply_overrides(train_prompt, ["Tiny Flux.seed=3"], object_info)


def test_override_spec_splits_on_the_first_equals_and_last_dot():
    override = parse_override("Train v1.2.run_name=a=b")
    assert (override.node, override.input, override.text) == ("Train v1.2", "run_name", "a=b")


@pytest.mark.parametrize(("content", "message"), [
    ("[1, 2]", "holds a JSON list, not a ComfyUI workflow"),
    ('{"a": 1}', "is neither a ComfyUI workflow"),
    ("{'single': 'quotes'}", "is not valid JSON: Expecting property name enclosed in double quotes at line 1, column 2"),
])
def test_unreadable_workflows(tmp_path, content, message):
    path = tmp_path / "w.json"
    path.write_text(content)
    with pytest.raises(CLIError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_workflow(path)


def test_prompt_request_body_is_accepted_as_api_format(tmp_path):
    body = {"prompt": json.loads(SAMPLE_API.read_text()), "client_id": "x"}
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body))
    assert to_api_prompt(read_workflow(path)) == body["prompt"]


def _fake_checkpoint(path, step):
    from leapalign.checkpoint import FORMAT, VERSION, atomic_save

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"format": FORMAT, "version": VERSION, "step": step}, path)


def test_resume_rules_for_the_training_node_folder(tmp_path, train_prompt):
    from trainer_cli.training_nodes import plan_resume, training_runs

    runs = training_runs(train_prompt, tmp_path)
    assert [r.folder for r in runs] == [tmp_path / "leapalign" / "tiny_run"]
    assert plan_resume(train_prompt, runs, None) is None  # fresh run, empty folder
    with pytest.raises(CLIError, match="no readable checkpoint in .*tiny_run to continue from"):
        plan_resume(train_prompt, runs, "latest")
    folder = runs[0].folder
    folder.mkdir(parents=True)
    (folder / ".checkpoint-00000004.pt.abc.tmp").write_bytes(b"half")  # a write that was interrupted
    _fake_checkpoint(folder / "checkpoint-00000002.pt", 2)
    with pytest.raises(CLIError, match="already holds checkpoints of an earlier run .*pass --resume"):
        plan_resume(train_prompt, runs, None)
    (folder / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    assert plan_resume(train_prompt, runs, "latest") == folder / "checkpoint-00000002.pt"
    assert train_prompt["6"]["inputs"]["resume"] is True
    assert (folder / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'  # after step 2, torn line: gone

    # a named checkpoint from elsewhere is copied in (atomically) and becomes the latest
    other = tmp_path / "elsewhere" / "checkpoint-00000003.pt"
    _fake_checkpoint(other, 3)
    assert plan_resume(train_prompt, runs, str(other)) == folder / "checkpoint-00000003.pt"
    assert (folder / "checkpoint-00000003.pt").read_bytes() == other.read_bytes()
    # an older checkpoint of the run: the newer one moves aside, nothing is deleted
    notes = []
    assert plan_resume(train_prompt, runs, str(folder / "checkpoint-00000002.pt"), warn=notes.append) == \
        folder / "checkpoint-00000002.pt"
    aside = next(folder.glob("superseded-*"))
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-00000003.pt", "metrics.jsonl"]
    assert notes == [f"note: resuming from step 2; the newer checkpoints (checkpoint-00000003.pt) moved to {aside}"]
    # an unreadable file is refused before it is copied anywhere
    bad = tmp_path / "elsewhere" / "checkpoint-00000009.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CLIError, match="is not a plain tensor checkpoint"):
        plan_resume(train_prompt, runs, str(bad))
    assert not (folder / bad.name).exists()

    from trainer_cli.training_nodes import remove_stale_temp_files

    assert [p.name for p in remove_stale_temp_files(runs)] == [".checkpoint-00000004.pt.abc.tmp"]
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["checkpoint-00000002.pt", "metrics.jsonl"]
