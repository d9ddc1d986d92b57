"""Stock nodes + LeapAlign nodes run through ComfyUI's own executor (acceptance 1, 2, 4)."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import pytest
import torch

TRAIN_STEPS = 16


def _world() -> dict:
    """Nodes 1-4 of every graph here: tiny Flux, CLIP, a contrasty VAE and a red colour-target reward."""
    return {
        "1": {"class_type": "TinyFluxModelLoader", "inputs": {"seed": 0}},
        "2": {"class_type": "TinyCLIPLoader", "inputs": {"seed": 0}},
        "3": {"class_type": "TinyVAELoader", "inputs": {"seed": 0, "weight_std": 0.2}},
        "4": {"class_type": "LeapAlignRewardLoader",
              "inputs": {"kind": "builtin_color_target", "model_file": "(none: built-in reward)",
                         "precision": "float32", "target_color": "1.0, 0.0, 0.0"}},
    }


METHOD_BLOCKS = {
    "leapalign": ("LeapAlignMethod", {"alpha": 0.5, "tau": 0.1, "hinge_lambda": -1.0, "pair_sampling": "released",
                                      "weighting": "both"}),
    "refl": ("LeapAlignMethodReFL", {"late_fraction": 0.44, "hinge_lambda": -1.0}),
    "draft_k": ("LeapAlignMethodDraftK", {"k": 1, "hinge_lambda": -1.0}),
    "draft_lv": ("LeapAlignMethodDraftLV", {"copies": 2, "sigma": 0.0, "include_last": True, "hinge_lambda": -1.0}),
    "drtune": ("LeapAlignMethodDRTune", {"trained_steps": 3, "early_stop": 0.4, "hinge_lambda": -1.0}),
    "full_backprop": ("LeapAlignMethodFullBackprop", {"hinge_lambda": -1.0}),
}
RUN = {"batch_size": 2, "grad_accumulation": 1, "seed": 0, "width": 32, "height": 32, "sampling_steps": 4,
       "scheduler": "simple", "guidance": 3.5, "checkpoint_every": 0}


def _train_graph(run_name: str, prefix: str, steps: int = TRAIN_STEPS, lr: float = 0.1, rank: int = 4,
                 method: str = "leapalign") -> dict:
    """The training graph as the editor builds it now: method, optimizer and LoRA blocks feeding the node."""
    block, block_inputs = METHOD_BLOCKS[method]
    return {
        **_world(),
        "5": {"class_type": "LeapAlignPromptList", "inputs": {"text": "a red apple\na red apple on a table", "file": ""}},
        "6": {"class_type": "LeapAlignTrain", "inputs": {
            "model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0], "reward": ["4", 0], "prompts": ["5", 0],
            "method": ["30", 0], "optimizer": ["31", 0], "lora_settings": ["32", 0],
            **RUN, "steps": steps, "run_name": run_name, "resume": False}},
        "7": {"class_type": "LeapAlignSaveLoRA", "inputs": {"lora": ["6", 1], "filename_prefix": prefix, "dtype": "fp32"}},
        "8": {"class_type": "LeapAlignPlotMetrics", "inputs": {"metrics": ["6", 2], "smoothing": 1}},
        "30": {"class_type": block, "inputs": dict(block_inputs)},
        "31": {"class_type": "LeapAlignOptimizer", "inputs": {"learning_rate": lr, "weight_decay": 0.0,
                                                              "grad_clip": 1.0, "ema_decay": 0.0}},
        "32": {"class_type": "LeapAlignLoRASettings", "inputs": {"lora_rank": rank, "lora_alpha": 4.0,
                                                                 "lora_targets": "attention+mlp+modulation"}},
    }


def _legacy_train_graph(run_name: str, prefix: str, steps: int, lr: float = 0.1, rank: int = 4) -> dict:
    """The same run as a workflow saved before the blocks: every setting on the all-in-one node."""
    graph = _train_graph(run_name, prefix, steps, lr, rank)
    for node_id in ("30", "31", "32"):
        del graph[node_id]
    graph["6"] = {"class_type": "LeapAlignTrainLoRA", "inputs": {
        "model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0], "reward": ["4", 0], "prompts": ["5", 0],
        "method": "leapalign", "alpha": 0.5, "hinge_lambda": -1.0, "tau": 0.1, "lora_rank": rank,
        "lora_alpha": 4.0, "lora_targets": "attention+mlp+modulation", "learning_rate": lr, "weight_decay": 0.0,
        "grad_clip": 1.0, "ema_decay": 0.0, **RUN, "steps": steps, "run_name": run_name, "resume": False}}
    return graph


def _eval_graph(lora_name: str | None, csv_name: str) -> dict:
    graph = {
        **_world(),
        "10": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["2", 0]}},
        "11": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["10", 0]}},
        "12": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 4}},
        "13": {"class_type": "KSampler", "inputs": {
            "model": ["20", 0] if lora_name else ["1", 0], "seed": 99, "steps": 4, "cfg": 1.0,
            "sampler_name": "euler", "scheduler": "simple", "positive": ["11", 0], "negative": ["11", 0],
            "latent_image": ["12", 0], "denoise": 1.0}},
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["3", 0]}},
        "15": {"class_type": "LeapAlignRewardScore", "inputs": {
            "reward": ["4", 0], "images": ["14", 0], "prompts": "a red apple", "csv_name": csv_name}},
        "16": {"class_type": "PreviewAny", "inputs": {"source": ["15", 0]}},
    }
    if lora_name:
        graph["20"] = {"class_type": "LoraLoaderModelOnly",
                       "inputs": {"model": ["1", 0], "lora_name": lora_name, "strength_model": 1.0}}
    return graph


def _mean_score(path: Path) -> float:
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return sum(float(r["builtin_color_target"]) for r in rows) / len(rows)


def test_rollout_capture_then_leap_loss_through_the_executor(comfy):
    from trainer_cli.comfy_runtime import execute_prompt

    graph = {
        "1": {"class_type": "TinyFluxModelLoader", "inputs": {"seed": 0}},
        "2": {"class_type": "TinyCLIPLoader", "inputs": {"seed": 0}},
        "3": {"class_type": "TinyVAELoader", "inputs": {"seed": 0}},
        "4": {"class_type": "LeapAlignRewardLoader",
              "inputs": {"kind": "builtin_brightness", "model_file": "(none: built-in reward)", "precision": "float32"}},
        "10": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["2", 0]}},
        "11": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["10", 0]}},
        "12": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 2}},
        "20": {"class_type": "LeapAlignRolloutCapture", "inputs": {
            "model": ["1", 0], "positive": ["11", 0], "latent_image": ["12", 0], "seed": 5, "steps": 4,
            "scheduler": "simple", "k": -1, "j": -1}},
        "21": {"class_type": "LeapAlignLeapLoss", "inputs": {
            "model": ["1", 0], "rollout": ["20", 0], "vae": ["3", 0], "reward": ["4", 0], "prompt": "a red apple",
            "alpha": 0.5, "hinge_lambda": -1.0, "tau": 0.1}},
        "22": {"class_type": "VAEDecode", "inputs": {"samples": ["20", 1], "vae": ["3", 0]}},
        "23": {"class_type": "PreviewImage", "inputs": {"images": ["22", 0]}},
    }
    result = execute_prompt(graph)
    assert result.success, result.error
    text = result.outputs["21"]["text"][0]
    values = dict(line.split(": ", 1) for line in text.splitlines())
    loss = float(values["loss"])
    assert torch.isfinite(torch.tensor(loss)) and loss > 0  # brightness < 1 = default lambda: hinge active
    assert 0 <= int(values["k"]) < int(values["j"]) <= 4
    assert len(result.outputs["23"]["images"]) == 2


@pytest.fixture(scope="module")
def trained(comfy, comfy_home):
    """One training run through the executor, saved as a LoRA file (shared by the tests below)."""
    import folder_paths

    from trainer_cli.comfy_runtime import execute_prompt

    result = execute_prompt(_train_graph("graph_run", "tests/graph_lora"))
    assert result.success, result.error
    lora_dir = Path(folder_paths.get_folder_paths("loras")[0])
    files = sorted((lora_dir / "tests").glob("graph_lora_*.safetensors"))
    assert len(files) == 1
    return {"result": result, "file": files[0], "name": files[0].relative_to(lora_dir).as_posix()}


def test_training_graph_raises_the_reward_on_fixed_seeds(comfy, trained, caplog):
    import folder_paths

    from trainer_cli.comfy_runtime import execute_prompt

    outputs = trained["result"].outputs
    assert outputs["7"]["text"] == [f"saved {trained['name']}"]
    assert len(outputs["8"]["images"]) == 1
    out_dir = Path(folder_paths.get_output_directory())
    metrics = (out_dir / "leapalign" / "graph_run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == TRAIN_STEPS

    assert execute_prompt(_eval_graph(None, "eval/base.csv")).success
    with caplog.at_level(logging.WARNING):
        assert execute_prompt(_eval_graph(trained["name"], "eval/trained.csv")).success
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    before = _mean_score(out_dir / "eval" / "base.csv")
    after = _mean_score(out_dir / "eval" / "trained.csv")
    assert after > before + 0.02, (before, after)


def test_cancel_stops_at_the_next_step_and_writes_no_lora(comfy, comfy_home):
    import comfy.model_management
    import folder_paths

    from trainer_cli.comfy_runtime import execute_prompt

    steps_seen = []

    def on_event(event, data):
        if event == "progress" and data.get("node") == "6":
            steps_seen.append(data["value"])
            # Cancel pressed at the first report: ComfyUI 0.9.2+ throttles later progress reports (100 ms /
            # 0.5 %), never the first; the stop itself is checked before every step
            if len(steps_seen) == 1:
                comfy.model_management.interrupt_current_processing(True)

    result = execute_prompt(_train_graph("cancel_run", "tests/cancelled_lora", steps=50), on_event=on_event)
    assert result.interrupted and not result.success
    assert steps_seen and max(steps_seen) <= steps_seen[0] + 1, steps_seen
    lora_dir = Path(folder_paths.get_folder_paths("loras")[0])
    assert not list(lora_dir.rglob("cancelled_lora*")), "a cancelled run must not write a LoRA file"
    assert not list(lora_dir.rglob("*.tmp"))
    # nothing lost: the cancel wrote a checkpoint of the last completed step (checkpoint_every is 0)
    folder = Path(folder_paths.get_output_directory()) / "leapalign" / "cancel_run"
    metrics = (folder / "metrics.jsonl").read_text()
    steps = [json.loads(line)["step"] for line in metrics.splitlines()]
    assert steps == list(range(1, len(steps) + 1)) and steps and steps[-1] <= steps_seen[0] + 1, (steps, steps_seen)
    assert [p.name for p in folder.glob("checkpoint-*.pt")] == [f"checkpoint-{steps[-1]:08d}.pt"]

    # a fresh re-run with the same run_name never touches that run (it used to delete its metrics)
    again = execute_prompt(_train_graph("cancel_run", "tests/cancelled_lora", steps=50))
    assert not again.success and "already holds an earlier run" in again.error["exception_message"]
    assert (folder / "metrics.jsonl").read_text() == metrics

    # resume continues exactly after the checkpoint: every step once
    graph = _train_graph("cancel_run", "tests/cancelled_lora", steps=steps[-1] + 1)
    graph["6"]["inputs"]["resume"] = True
    assert execute_prompt(graph).success
    after = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert after == list(range(1, steps[-1] + 2))


def test_a_run_folder_in_use_is_refused_naming_the_holder(comfy, comfy_home):
    import folder_paths

    from leapalign.runlock import RunLock
    from trainer_cli.comfy_runtime import execute_prompt

    folder = Path(folder_paths.get_output_directory()) / "leapalign" / "locked_run"
    with RunLock(folder, command="another ComfyUI"):
        result = execute_prompt(_train_graph("locked_run", "tests/locked", steps=1))
    message = result.error["exception_message"]
    assert not result.success and f"{folder} is in use by another run: pid {os.getpid()} on " in message
    assert "(another ComfyUI); wait for it to finish, or give this run another run_name" in message
    assert not (folder / "metrics.jsonl").exists()


def test_bad_graph_inputs_give_node_errors(comfy):
    from trainer_cli.comfy_runtime import execute_prompt

    graph = _train_graph("bad_rank", "tests/bad", steps=1, rank=64)  # tiny Flux is 64 wide: rank 64 ok, 65 not
    graph["32"]["inputs"]["lora_rank"] = 65
    result = execute_prompt(graph)
    assert not result.success
    message = result.error["exception_message"]
    assert message.startswith("LeapAlign Train LoRA: LoRA rank 65 is larger than layer")
    assert result.error["exception_type"].endswith("LeapAlignNodeError")


@pytest.mark.parametrize("method", ["refl", "draft_k", "full_backprop", "drtune", "draft_lv"])
def test_baselines_train_through_the_executor(comfy, method):
    """Every baseline trains in the node, including those that recompute velocities during backward
    (gradient checkpointing): backward happens while ComfyUI's sampler still holds the model."""
    import folder_paths
    from safetensors.torch import load

    from trainer_cli.comfy_runtime import execute_prompt

    graph = _train_graph(f"ckpt_{method}", f"tests/ckpt_{method}", steps=2, method=method)
    result = execute_prompt(graph)
    assert result.success, result.error
    lora_dir = Path(folder_paths.get_folder_paths("loras")[0])
    (path,) = sorted((lora_dir / "tests").glob(f"ckpt_{method}_*.safetensors"))
    state = load(path.read_bytes())
    ups = [v for k, v in state.items() if k.endswith("lora_up.weight")]
    assert ups and all(torch.isfinite(v).all() for v in ups)
    assert max(float(v.abs().max()) for v in ups) > 0  # lora_up starts at zero: the steps updated it


def _saved(prefix: str) -> tuple[dict, dict]:
    """The one LoRA file saved under ``prefix``: (tensors, metadata)."""
    import folder_paths
    from safetensors import safe_open

    lora_dir = Path(folder_paths.get_folder_paths("loras")[0])
    (path,) = sorted((lora_dir / "tests").glob(f"{prefix}_*.safetensors"))
    with safe_open(str(path), "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


def test_swapping_the_method_block_changes_what_is_trained(comfy):
    """Same graph, one node swapped: the LoRA says which method trained it, with that block's settings,
    and the weights differ; the optimizer and LoRA blocks reach the file too."""
    from trainer_cli.comfy_runtime import execute_prompt

    for method in ("leapalign", "refl"):
        result = execute_prompt(_train_graph(f"swap_{method}", f"tests/swap_{method}", steps=2, lr=0.05, rank=3,
                                             method=method))
        assert result.success, result.error
    (leap, leap_meta), (refl, refl_meta) = _saved("swap_leapalign"), _saved("swap_refl")
    assert (leap_meta["leapalign_method"], refl_meta["leapalign_method"]) == ("leapalign", "refl")
    leap_params, refl_params = json.loads(leap_meta["leapalign_parameters"]), json.loads(refl_meta["leapalign_parameters"])
    assert leap_params["alpha"] == 0.5 and refl_params["alpha"] == 0.3  # the ReFL block leaves alpha at its default
    assert refl_params["refl_late_fraction"] == 0.44
    for params, meta in ((leap_params, leap_meta), (refl_params, refl_meta)):
        assert (params["lr"], params["rank"], params["lora_alpha"], params["weight_decay"]) == (0.05, 3, 4.0, 0.0)
        assert meta["ss_network_dim"] == "3" and params["targets"] == "attention+mlp+modulation"
    assert leap.keys() == refl.keys()
    difference = max(float((leap[k] - refl[k]).abs().max()) for k in leap if k.endswith("lora_up.weight"))
    assert difference > 1e-4


def test_a_workflow_saved_before_the_blocks_trains_the_same_lora(comfy):
    """Old format (all settings on LeapAlignTrainLoRA) and new format (blocks) give the same LoRA, number for
    number: the old node only packs its widgets into the same recipe."""
    from trainer_cli.comfy_runtime import execute_prompt

    assert execute_prompt(_legacy_train_graph("legacy_run", "tests/legacy", steps=2, lr=0.05)).success
    assert execute_prompt(_train_graph("blocks_run", "tests/blocks", steps=2, lr=0.05)).success
    (old, old_meta), (new, new_meta) = _saved("legacy"), _saved("blocks")
    assert old.keys() == new.keys() and any(float(v.abs().max()) > 0 for k, v in new.items() if "lora_up" in k)
    for key in old:
        torch.testing.assert_close(old[key], new[key], rtol=1e-4, atol=1e-6)
    assert json.loads(old_meta["leapalign_parameters"]) == json.loads(new_meta["leapalign_parameters"])
