"""Write the digits demo workflow: ``workflows/demo_digits.json`` (UI format) and its API twin.

The graph is declared once below and laid out with the same helpers as the Flux example workflows
(``workflows/build_examples.py``: widget order from ComfyUI's own node definitions, API twin via
comfy-cli's converter). The training settings here are the demo's tuned defaults. Rerun after changing
a node's inputs::

    .venv/bin/python scripts/build_demo_workflow.py
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "workflows" / "demo_digits.json"
API_WORKFLOW = REPO / "workflows" / "api" / "demo_digits.api.json"
LORA_PREFIX = "leapalign/digits_leapalign"
CURVES_PREFIX = "digits_curves"
EVAL_PREFIX = "digits_before_after"
RUN_NAME = "digits_demo"

# The demo's training recipe (tuned so the judge-accuracy gain is large and stable; see the README section on the
# demo), one dict per block: the method, optimizer and LoRA blocks feed the training node.
METHOD_SETTINGS = {"alpha": 0.3, "tau": 0.1, "hinge_lambda": -1.0, "pair_sampling": "released", "weighting": "both"}
OPTIMIZER_SETTINGS = {"learning_rate": 1e-3, "weight_decay": 1e-4, "grad_clip": 1.0, "ema_decay": 0.0}
LORA_SETTINGS = {"lora_rank": 8, "lora_alpha": 8.0, "lora_targets": "attention+mlp"}
TRAIN_SETTINGS = {
    "steps": 150, "batch_size": 16, "grad_accumulation": 1, "seed": 0, "width": 16,
    "height": 16, "sampling_steps": 8, "scheduler": "simple", "guidance": 3.5, "checkpoint_every": 0,
    "run_name": RUN_NAME, "resume": False, "sigma_shift": "auto",
}


def graph(prompts: str, train: dict) -> list:
    """(id, class_type, title, widgets, links by input name, position, size), as in build_examples.py.

    Sizes leave room for what each node shows after a run (the curves, the sample grid, the two
    "Preview as Text" tables), so no node grows over another; the browser test checks it.
    """
    return [
        (1, "LeapAlignDigitsWorld", "Digits world (model, text encoder, codec, reward, judge)", {}, {}, (0, 0),
         (400, 170)),
        (2, "LeapAlignPromptList", "Training prompts", {"text": prompts, "file": ""}, {}, (0, 240), (400, 320)),
        (3, "LeapAlignTrain", "Train LoRA (LeapAlign)", dict(train),
         {"model": (1, 0), "clip": (1, 1), "vae": (1, 2), "reward": (1, 3), "prompts": (2, 0), "method": (10, 0),
          "optimizer": (11, 0), "lora_settings": (12, 0)}, (440, 0), (400, 600)),
        (10, "LeapAlignMethod", "Method: LeapAlign", dict(METHOD_SETTINGS), {}, (0, 610), (400, 200)),
        (11, "LeapAlignOptimizer", "Optimizer", dict(OPTIMIZER_SETTINGS), {}, (0, 860), (400, 160)),
        (12, "LeapAlignLoRASettings", "LoRA", dict(LORA_SETTINGS), {}, (0, 1070), (400, 130)),
        (4, "LeapAlignSaveLoRA", "Save LoRA", {"filename_prefix": LORA_PREFIX, "dtype": "fp32"},
         {"lora": (3, 1)}, (880, 0), (400, 110)),
        (5, "LeapAlignPlotMetrics", "Reward / loss curves", {"smoothing": 10},
         {"metrics": (3, 2), "lora_name": (4, 0)}, (880, 170), (520, 380)),
        (6, "SaveImage", "Save curves", {"filename_prefix": CURVES_PREFIX}, {"images": (5, 0)}, (1440, 560),
         (420, 300)),
        (8, "PreviewAny", "Training summary", {}, {"source": (5, 1)}, (1440, 170), (420, 330)),
        (7, "LeapAlignDigitsEvaluate", "Before / after on held-out noises",
         {"filename_prefix": EVAL_PREFIX},
         {"model": (1, 0), "clip": (1, 1), "vae": (1, 2), "reward": (1, 3), "judge": (1, 4), "model_after": (3, 0)},
         (880, 620), (520, 900)),
        (9, "PreviewAny", "Accuracy before / after", {}, {"source": (7, 1)}, (1440, 920), (420, 260)),
    ]


def _examples_module():
    spec = importlib.util.spec_from_file_location("leapalign_build_examples", REPO / "workflows" / "build_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    sys.path.insert(0, str(REPO))
    from leapalign.demo.prompts import all_digit_prompts
    from trainer_cli.comfy_runtime import boot_comfyui
    from trainer_cli.object_info import build_object_info

    boot_comfyui(cpu=True)
    examples = _examples_module()
    object_info = build_object_info()
    ui = examples.to_ui(graph("\n".join(all_digit_prompts()), TRAIN_SETTINGS), object_info)
    api = examples.convert(ui, object_info)
    for path, data in ((WORKFLOW, ui), (API_WORKFLOW, api)):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
