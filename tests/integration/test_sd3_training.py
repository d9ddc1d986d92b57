"""LeapAlign and every baseline train a LoRA on the tiny SD3 model through ComfyUI's executor; stock
nodes (KSampler with ModelSamplingSD3, LoraLoaderModelOnly) confirm the reward went up."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch

TRAIN_STEPS = 16


def _world(variant: str = "medium") -> dict:
    return {
        "1": {"class_type": "TinySD3ModelLoader", "inputs": {"variant": variant, "seed": 0}},
        "2": {"class_type": "TinySD3CLIPLoader", "inputs": {"seed": 0}},
        "3": {"class_type": "TinyVAELoader", "inputs": {"seed": 0, "weight_std": 0.2}},
        "4": {"class_type": "LeapAlignRewardLoader",
              "inputs": {"kind": "builtin_color_target", "model_file": "(none: built-in reward)",
                         "precision": "float32", "target_color": "1.0, 0.0, 0.0"}},
        "9": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 3.0}},
    }


def _train_graph(run_name: str, prefix: str, steps: int = TRAIN_STEPS, method: str = "leapalign",
                 variant: str = "medium", lr: float = 0.05) -> dict:
    return {
        **_world(variant),
        "5": {"class_type": "LeapAlignPromptList", "inputs": {"text": "a red apple\na red apple on a table", "file": ""}},
        "6": {"class_type": "LeapAlignTrainLoRA", "inputs": {
            "model": ["9", 0], "clip": ["2", 0], "vae": ["3", 0], "reward": ["4", 0], "prompts": ["5", 0],
            "method": method, "alpha": 0.5, "hinge_lambda": -1.0, "tau": 0.1, "lora_rank": 4,
            "lora_alpha": 4.0, "lora_targets": "attention+mlp+modulation", "learning_rate": lr, "weight_decay": 0.0,
            "grad_clip": 1.0, "ema_decay": 0.0, "steps": steps, "batch_size": 2, "grad_accumulation": 1, "seed": 0,
            "width": 32, "height": 32, "sampling_steps": 4, "scheduler": "simple", "guidance": 3.5,
            "checkpoint_every": 0, "run_name": run_name, "resume": False}},
        "7": {"class_type": "LeapAlignSaveLoRA", "inputs": {"lora": ["6", 1], "filename_prefix": prefix, "dtype": "fp32"}},
    }


def _eval_graph(lora_name: str | None, csv_name: str) -> dict:
    graph = {
        **_world(),
        "10": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["2", 0]}},
        "12": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 4}},
        "13": {"class_type": "KSampler", "inputs": {
            "model": ["20", 0] if lora_name else ["9", 0], "seed": 99, "steps": 4, "cfg": 1.0,
            "sampler_name": "euler", "scheduler": "simple", "positive": ["10", 0], "negative": ["10", 0],
            "latent_image": ["12", 0], "denoise": 1.0}},
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["3", 0]}},
        "15": {"class_type": "LeapAlignRewardScore", "inputs": {
            "reward": ["4", 0], "images": ["14", 0], "prompts": "a red apple", "csv_name": csv_name}},
        "16": {"class_type": "PreviewAny", "inputs": {"source": ["15", 0]}},
    }
    if lora_name:
        graph["20"] = {"class_type": "LoraLoaderModelOnly",
                       "inputs": {"model": ["9", 0], "lora_name": lora_name, "strength_model": 1.0}}
    return graph


def _mean_score(path: Path) -> float:
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return sum(float(r["builtin_color_target"]) for r in rows) / len(rows)


def _saved(prefix_glob: str) -> Path:
    import folder_paths

    lora_dir = Path(folder_paths.get_folder_paths("loras")[0])
    (path,) = sorted((lora_dir / "tests").glob(prefix_glob))
    return path


@pytest.mark.slow  # 16 training steps + two 4-image evaluations on a 77-token MMDiT: about 1-4 min on 2 cores
def test_sd3_training_graph_raises_the_reward_on_fixed_seeds(comfy, caplog):
    """Measured on this world (mean reward of the 4 fixed-seed KSampler images, base -0.854): lr 0.05 gives
    -0.794, lr 0.03 -0.822, lr 0.1 -0.867 (too large for 16 steps: the training rewards oscillate)."""
    import folder_paths
    from safetensors import safe_open

    from trainer_cli.comfy_runtime import execute_prompt

    result = execute_prompt(_train_graph("sd3_run", "tests/sd3_lora"))
    assert result.success, result.error
    path = _saved("sd3_lora_*.safetensors")
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["ss_base_model_version"] == "sd3"
        assert all(k.startswith("transformer.transformer_blocks.") for k in handle.keys())
    name = path.relative_to(folder_paths.get_folder_paths("loras")[0]).as_posix()

    out_dir = Path(folder_paths.get_output_directory())
    assert execute_prompt(_eval_graph(None, "eval_sd3/base.csv")).success
    with caplog.at_level(logging.WARNING):
        assert execute_prompt(_eval_graph(name, "eval_sd3/trained.csv")).success
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    before = _mean_score(out_dir / "eval_sd3" / "base.csv")
    after = _mean_score(out_dir / "eval_sd3" / "trained.csv")
    assert after > before + 0.01, (before, after)  # +0.017 with the released defaults (alpha 0.3, released pairs)


@pytest.mark.parametrize("method", ["refl", "draft_k", "full_backprop", "drtune", "draft_lv"])
def test_sd3_baselines_train_through_the_executor(comfy, method):
    from safetensors.torch import load

    from trainer_cli.comfy_runtime import execute_prompt

    result = execute_prompt(_train_graph(f"sd3_{method}", f"tests/sd3_{method}", steps=2, method=method,
                                         variant="large"))
    assert result.success, result.error
    state = load(_saved(f"sd3_{method}_*.safetensors").read_bytes())
    ups = [v for k, v in state.items() if k.endswith("lora_B.weight")]
    assert ups and all(torch.isfinite(v).all() for v in ups)
    assert max(float(v.abs().max()) for v in ups) > 0  # lora_B starts at zero: the steps updated it


def test_non_flow_model_is_refused_with_the_known_families(comfy):
    from trainer_cli.comfy_runtime import execute_prompt

    graph = _train_graph("sd3_refused", "tests/refused", steps=1)
    graph["9"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["1", 0], "sampling": "eps", "zsnr": False}}
    result = execute_prompt(graph)
    assert not result.success
    assert result.error["exception_message"].startswith(
        "LeapAlign Train LoRA: this SD3 / SD3.5 model samples with ModelSamplingAdvanced (ModelSamplingDiscrete, "
        "EPS), not flow matching"), result.error
