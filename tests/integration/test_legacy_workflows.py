"""A workflow saved before the method/optimizer/LoRA blocks existed still loads and trains.

``tests/workflows/legacy/`` holds the digits demo as the editor saved it then (every setting on the
all-in-one ``LeapAlignTrainLoRA`` node, positional ``widgets_values``) and its API twin of that time.
"""

from __future__ import annotations

import json
from pathlib import Path

LEGACY = Path(__file__).resolve().parents[1] / "workflows" / "legacy"


def test_the_old_demo_file_converts_as_it_did_and_trains(comfy):
    import folder_paths
    from comfy_cli.workflow_to_api import convert_ui_to_api
    from safetensors import safe_open

    from trainer_cli.comfy_runtime import execute_prompt, validate_prompt
    from trainer_cli.object_info import build_object_info

    ui = json.loads((LEGACY / "demo_digits.ui.json").read_text(encoding="utf-8"))
    api = convert_ui_to_api(ui, build_object_info())
    assert api == json.loads((LEGACY / "demo_digits.api.json").read_text(encoding="utf-8"))
    assert api["3"]["class_type"] == "LeapAlignTrainLoRA" and api["3"]["inputs"]["learning_rate"] == 1e-3
    assert validate_prompt(api)

    graph = {node_id: api[node_id] for node_id in ("1", "2", "3", "4")}  # world, prompts, training, Save LoRA
    graph["3"]["inputs"].update(steps=2, run_name="legacy_demo")
    graph["4"]["inputs"]["filename_prefix"] = "legacy/digits"
    result = execute_prompt(graph)
    assert result.success, result.error
    lora_dir = Path(folder_paths.get_folder_paths("loras")[0])
    (path,) = sorted((lora_dir / "legacy").glob("digits_*.safetensors"))
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    parameters = json.loads(metadata["leapalign_parameters"])
    assert metadata["leapalign_method"] == "leapalign" and metadata["leapalign_steps"] == "2"
    assert (parameters["rank"], parameters["lr"], parameters["alpha"], parameters["batch_size"]) == (8, 1e-3, 0.3, 16)
