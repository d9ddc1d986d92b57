"""The shapes world as ComfyUI objects: loads through its node in a graph, trains with the same Train node,
evaluates GenEval-style, and its early sampling steps decide the composition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.comfy

PROMPTS = "a photo of a red square and a blue circle\na photo of a circle left of a triangle\na photo of three squares"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(pack_import):
    shapes_nodes = pack_import("nodes.shapes_nodes")
    with torch.inference_mode():
        return shapes_nodes.LeapAlignShapesWorld.execute().result


def test_world_is_real_comfyui_parts_on_the_shifted_schedule(world, pack_import):
    import comfy.model_base
    import comfy.sd

    import nodes as comfy_nodes

    model, clip, vae, reward = world
    assert isinstance(model.model, comfy.model_base.Flux) and isinstance(vae, comfy.sd.VAE)
    shift = pack_import("nodes.flux_shift")
    assert shift.schedule_mu(model) == pytest.approx(shift.resolution_mu(32, 32))
    (cond,) = comfy_nodes.CLIPTextEncode().encode(clip, "a photo of a yellow triangle and a green square")
    assert cond[0][0].shape == (1, 16, 64)
    assert not any(p.is_inference() for p in model.model.diffusion_model.parameters())


def _graph(steps: int, evaluate: bool, run_name: str = "shapes_graph") -> dict:
    graph = {
        "1": {"class_type": "LeapAlignShapesWorld", "inputs": {}},
        "2": {"class_type": "LeapAlignPromptList", "inputs": {"text": PROMPTS, "file": ""}},
        "3": {"class_type": "LeapAlignTrainLoRA", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "reward": ["1", 3], "prompts": ["2", 0],
            "method": "leapalign", "alpha": 0.3, "hinge_lambda": -1.0, "tau": 0.1, "lora_rank": 4,
            "lora_alpha": 4.0, "lora_targets": "attention+mlp", "learning_rate": 1e-3, "weight_decay": 0.0,
            "grad_clip": 1.0, "ema_decay": 0.0, "steps": steps, "batch_size": 3, "grad_accumulation": 1, "seed": 0,
            "width": 32, "height": 32, "sampling_steps": 10, "scheduler": "simple", "guidance": 3.5,
            "checkpoint_every": 0, "run_name": run_name, "resume": False}},
        "4": {"class_type": "LeapAlignSaveLoRA", "inputs": {"lora": ["3", 1], "filename_prefix": "tests/shapes_lora",
                                                            "dtype": "fp32"}},
    }
    if evaluate:
        graph["5"] = {"class_type": "LeapAlignShapesEvaluate", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "reward": ["1", 3], "samples_per_prompt": 2,
            "seed": 5, "sampling_steps": 10, "filename_prefix": "shapes_eval_test", "model_after": ["3", 0]}}
    return graph


def test_loads_and_trains_through_the_executor(comfy):
    import folder_paths

    from trainer_cli.comfy_runtime import execute_prompt

    result = execute_prompt(_graph(steps=2, evaluate=False))
    assert result.success, result.error
    lora_dir = Path(folder_paths.get_folder_paths("loras")[0]) / "tests"
    assert sorted(lora_dir.glob("shapes_lora_*.safetensors"))
    metrics = (Path(folder_paths.get_output_directory()) / "leapalign" / "shapes_graph" / "metrics.jsonl")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert len(rows) == 2 and all(r["j"] < 10 and r["velocity_evals"] == 2 for r in rows)   # released pairs


@pytest.mark.slow
def test_evaluate_node_reports_geneval_categories_and_quality(comfy):
    """Slow (about a minute): the evaluate node samples all 126 prompts twice, before and after."""
    import folder_paths

    from trainer_cli.comfy_runtime import execute_prompt

    result = execute_prompt(_graph(steps=3, evaluate=True, run_name="shapes_graph_evaluated"))  # runs never mix
    assert result.success, result.error
    files = sorted(Path(folder_paths.get_output_directory()).glob("shapes_eval_test_*_.json"))
    assert files
    record = json.loads(files[-1].read_text())
    for label in ("before", "after"):
        score = record[label]
        assert score["samples"] == 126 * 2 and set(score["per_category"]) == {
            "single_object", "two_object", "counting", "colors", "position", "color_attr"}
        assert 0.0 <= score["overall"] <= 1.0 and score["quality"]["fd"] > 0
        assert score["overall"] == pytest.approx(sum(score["per_category"].values()) / 6)
    assert record["after"]["mean_reward"] != record["before"]["mean_reward"]
    assert "overall" in result.outputs["5"]["text"][0]


def test_early_steps_decide_layout_and_count_late_steps_the_shapes(world, pack_import):
    """Swap the noise path at an early vs a late step (leapalign/shapes/probe.py).

    As in real text-to-image models, the noisy early steps fix where the objects are and how many there
    are, colours follow, and the exact outline (which shape) is settled last: swapped after one step
    (sigma 0.93) the layout follows the new noise; swapped at step 5 of 10 (sigma 0.61) layout and count
    are already fixed while the shapes are still open; one step before the end everything is fixed.
    The benchmark page (docs/benchmarks/fidelity.md) shows the whole curve.
    """
    from leapalign.shapes import spec
    from leapalign.shapes.probe import composition_kept
    from leapalign.shapes.prompts import all_prompts

    adapters = pack_import("nodes.adapters")
    model, clip, vae, _ = world
    prompts = all_prompts()[::4]
    gen = torch.Generator().manual_seed(11)
    z_a = torch.randn(len(prompts), 16, 4, 4, generator=gen)
    z_b = torch.randn(len(prompts), 16, 4, 4, generator=gen)
    sigmas = adapters.model_sigmas(model, "simple", spec.SAMPLING_STEPS)

    def body(velocity, x_init, grid, inner):
        return composition_kept(velocity, decoder, z_a, z_b, grid, [1, 5, 9]), x_init

    with torch.inference_mode(False):
        decoder = adapters.make_decoder(vae, model)
        kept, _ = adapters.sample_with(model, adapters.PromptEncoder(clip, 3.5)(prompts), z_a, sigmas, body)
    early, middle, late = kept[1], kept[5], kept[9]
    assert early["layout"] < 0.3 and early["composition"] < 0.1, kept   # follows the new noise
    assert middle["layout"] >= 0.85 and middle["count"] >= 0.85, kept    # layout and count decided early
    assert middle["shapes"] <= middle["layout"] - 0.3, kept              # which shape: still open
    assert late["composition"] >= 0.85, kept                             # everything fixed at the end


@pytest.mark.slow
def test_shapes_world_regenerates_bit_identically(tmp_path, comfy):
    """Slow (half a minute): a shortened regeneration reproduces the recorded SHA-256s."""
    if comfy.version != "0.3.75":
        pytest.skip("the recorded digests are the pinned ComfyUI 0.3.75's arithmetic: 0.14+ Flux (RMSNorm) "
                    "rounds differently, as for the digits world")
    import hashlib
    import subprocess
    import sys

    from cli_harness import cli_env, explain

    from leapalign.shapes import spec
    from trainer_cli.locate import REPO_ROOT

    record = json.loads((spec.ASSETS_DIR / spec.CHECKSUM_FILE).read_text())
    proc = subprocess.run([sys.executable, "scripts/make_shapes_world.py", "--short", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=REPO_ROOT, env=cli_env())
    assert proc.returncode == 0, explain(proc)
    digests = {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in record["short"]}
    assert digests == record["short"]
    for name, digest in record["full"].items():
        assert hashlib.sha256((spec.ASSETS_DIR / name).read_bytes()).hexdigest() == digest
