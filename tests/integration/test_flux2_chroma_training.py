"""The training node trains a LoRA on the tiny Flux.2 and Chroma models through ComfyUI's executor
(tiny CLIP-L + T5 text encoder of width 64; Flux.2 with a 128-channel, 1/16-size tiny VAE)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

WORLDS = {
    "flux2": {"model": "TinyFlux2ModelLoader", "vae": "TinyFlux2VAELoader", "preset": "attention+mlp+modulation",
              "prefix": "diffusion_model."},
    "chroma": {"model": "TinyChromaModelLoader", "vae": "TinyVAELoader", "preset": "attention+mlp",
               "prefix": "transformer."},
}


def _train_graph(name: str, run_name: str, prefix: str, steps: int = 2) -> dict:
    world = WORLDS[name]
    return {
        "1": {"class_type": world["model"], "inputs": {"seed": 0}},
        "2": {"class_type": "TinyCLIPLoader", "inputs": {"seed": 0}},
        "3": {"class_type": world["vae"], "inputs": {"seed": 0}},
        "4": {"class_type": "LeapAlignRewardLoader",
              "inputs": {"kind": "builtin_color_target", "model_file": "(none: built-in reward)",
                         "precision": "float32", "target_color": "1.0, 0.0, 0.0"}},
        "5": {"class_type": "LeapAlignPromptList", "inputs": {"text": "a red apple\na red apple on a table", "file": ""}},
        "6": {"class_type": "LeapAlignTrainLoRA", "inputs": {
            "model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0], "reward": ["4", 0], "prompts": ["5", 0],
            "method": "leapalign", "alpha": 0.5, "hinge_lambda": -1.0, "tau": 0.1, "lora_rank": 4,
            "lora_alpha": 4.0, "lora_targets": world["preset"], "learning_rate": 0.05, "weight_decay": 0.0,
            "grad_clip": 1.0, "ema_decay": 0.0, "steps": steps, "batch_size": 2, "grad_accumulation": 1, "seed": 0,
            "width": 64, "height": 64, "sampling_steps": 3, "scheduler": "simple", "guidance": 4.0,
            "checkpoint_every": 0, "run_name": run_name, "resume": False}},
        "7": {"class_type": "LeapAlignSaveLoRA", "inputs": {"lora": ["6", 1], "filename_prefix": prefix, "dtype": "fp32"}},
    }


@pytest.mark.parametrize("name", list(WORLDS))
def test_training_node_trains_a_lora_the_stock_loader_takes(comfy, caplog, name):
    import folder_paths
    from safetensors import safe_open
    from safetensors.torch import load

    import nodes as comfy_nodes
    from trainer_cli.comfy_runtime import execute_prompt

    result = execute_prompt(_train_graph(name, f"{name}_run", f"tests/{name}_lora"))
    assert result.success, result.error
    lora_dir = Path(folder_paths.get_folder_paths("loras")[0])
    (path,) = sorted((lora_dir / "tests").glob(f"{name}_lora_*.safetensors"))
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["ss_base_model_version"] == name
    state = load(path.read_bytes())
    assert state and all(k.startswith(WORLDS[name]["prefix"]) for k in state)
    ups = [v for k, v in state.items() if k.endswith("lora_B.weight")]
    assert all(torch.isfinite(v).all() for v in ups) and max(float(v.abs().max()) for v in ups) > 0

    run_dir = Path(folder_paths.get_output_directory()) / "leapalign" / f"{name}_run"
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(float(v))) for v in losses)

    import family_fixtures_flux as ff

    model = ff.build_tiny_flux2(seed=0) if name == "flux2" else ff.build_tiny_chroma(seed=0)
    with caplog.at_level(logging.WARNING):
        loaded = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(
            model, path.relative_to(lora_dir).as_posix(), 1.0)[0]
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert len(loaded.patches) == (13 if name == "flux2" else 10)  # every target of the preset
