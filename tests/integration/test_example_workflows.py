"""Every example workflow converts from UI to API format and validates against ComfyUI (acceptance 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer_cli.locate import REPO_ROOT

EXAMPLES = REPO_ROOT / "workflows"
UI_FILES = sorted(EXAMPLES.glob("*.json"))
FLUX_FILES = [p for p in UI_FILES if p.stem.startswith("leapalign_flux")]
SD35_FILES = [p for p in UI_FILES if p.stem.startswith("leapalign_sd35")]

# Model files the examples reference, by ComfyUI model folder (empty placeholders are enough to validate).
REFERENCED = {
    "diffusion_models": ["flux1-dev.safetensors"],
    "text_encoders": ["clip_l.safetensors", "t5xxl_fp16.safetensors"],
    "vae": ["ae.safetensors"],
    "reward_models": ["HPS_v2.1_compressed.pt"],
    "loras": ["leapalign/flux_dev_hpsv21_00001_.safetensors"],
}
REFERENCED_SD35 = {  # the SD3.5 examples (text_encoders clip_l / t5xxl_fp16 and the reward are shared)
    "checkpoints": ["sd3.5_medium.safetensors"],
    "text_encoders": ["clip_g.safetensors"],
    "loras": ["leapalign/sd35_medium_hpsv21_00001_.safetensors"],
}
for _kind, _names in REFERENCED_SD35.items():
    REFERENCED.setdefault(_kind, []).extend(_names)


@pytest.fixture(scope="module")
def object_info(comfy):
    from trainer_cli.object_info import build_object_info

    return build_object_info()


@pytest.fixture
def model_files(comfy, tmp_path):
    """Empty placeholder files of every referenced model, in a temp folder registered first."""
    import folder_paths

    for kind, names in REFERENCED.items():
        folder = tmp_path / kind
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"")
        folder_paths.add_model_folder_path(kind, str(folder), is_default=True)
    folder_paths.filename_list_cache.clear()
    yield
    for kind in REFERENCED:
        paths = folder_paths.folder_names_and_paths[kind][0]
        paths[:] = [p for p in paths if not p.startswith(str(tmp_path))]
    folder_paths.filename_list_cache.clear()


def test_examples_exist_and_are_ui_format():
    names = {p.stem for p in UI_FILES}
    assert {"leapalign_flux_dev_hpsv21_train", "leapalign_flux_dev_eval_lora"} <= names
    for path in UI_FILES:
        data = json.loads(path.read_text())
        assert isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list), path.name


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_converts_to_its_api_twin_and_validates(path, object_info, model_files):
    from comfy_cli.workflow_to_api import convert_ui_to_api

    from trainer_cli.comfy_runtime import validate_prompt

    api = convert_ui_to_api(json.loads(path.read_text()), object_info)
    twin = EXAMPLES / "api" / f"{path.stem}.api.json"
    assert api == json.loads(twin.read_text()), f"{twin.name} is stale: run workflows/build_examples.py"
    outputs = validate_prompt(api)
    assert outputs


@pytest.mark.parametrize("path", FLUX_FILES, ids=lambda p: p.stem)
def test_flux_examples_use_only_stock_nodes_and_this_pack(path, object_info):
    data = json.loads(path.read_text())
    for node in data["nodes"]:
        module = object_info[node["type"]]["python_module"]
        stock = module == "nodes" or module.startswith("comfy_extras.")
        assert stock or node["type"].startswith("LeapAlign"), (node["type"], module)
    types = {n["type"] for n in data["nodes"]}
    assert {"UNETLoader", "DualCLIPLoader", "VAELoader"} <= types


@pytest.mark.parametrize("path", SD35_FILES, ids=lambda p: p.stem)
def test_sd35_examples_use_only_stock_nodes_and_this_pack(path, object_info):
    data = json.loads(path.read_text())
    for node in data["nodes"]:
        module = object_info[node["type"]]["python_module"]
        stock = module == "nodes" or module.startswith("comfy_extras.")
        assert stock or node["type"].startswith("LeapAlign"), (node["type"], module)
    types = {n["type"] for n in data["nodes"]}
    assert {"CheckpointLoaderSimple", "TripleCLIPLoader", "ModelSamplingSD3"} <= types


def test_validation_is_meaningful_without_the_model_files(object_info):
    """Without the referenced files, ComfyUI rejects the workflow: the check above really checks names."""
    from comfy_cli.workflow_to_api import convert_ui_to_api

    from trainer_cli.comfy_runtime import PromptValidationError, validate_prompt

    api = convert_ui_to_api(json.loads((EXAMPLES / "leapalign_flux_dev_hpsv21_train.json").read_text()), object_info)
    with pytest.raises(PromptValidationError, match="flux1-dev.safetensors"):
        validate_prompt(api)


def test_template_browser_lists_every_ui_workflow_and_no_api_twin(comfy):
    """ComfyUI's template route globs ``<custom_nodes>/<pack>/<folder>/*.json`` for a fixed list of folder
    names (``app/custom_node_manager.py``); ``workflows`` is one of them, and the API twins sit one level down."""
    import ast

    import folder_paths

    source = (Path(folder_paths.base_path) / "app" / "custom_node_manager.py").read_text()
    match = next(line for line in source.splitlines() if "example_workflow_folder_names =" in line)
    served = ast.literal_eval(match.split("=", 1)[1].strip())
    assert EXAMPLES.name in served
    assert {p.stem for p in UI_FILES} >= {"leapalign_flux_dev_hpsv21_train", "leapalign_flux_dev_eval_lora", "demo_digits"}
    assert not [p for p in UI_FILES if p.name.endswith(".api.json")]
    assert sorted(p.name for p in (EXAMPLES / "api").glob("*.json")) == sorted(f"{p.stem}.api.json" for p in UI_FILES)
