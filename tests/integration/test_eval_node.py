"""``LeapAlign Evaluate`` inside the booted ComfyUI on the tiny Flux: its images are what stock
KSampler draws for the same seed, its scores are the rewards' on those images, bad inputs are named."""

from __future__ import annotations

import csv

import pytest
import torch

from leapalign.rewards import BrightnessReward, ColorTargetReward

pytestmark = pytest.mark.comfy
PROMPTS = ["a red apple", "a blue car"]


@pytest.fixture(scope="module")
def eval_nodes(pack_import):
    return pack_import("nodes.eval_nodes")


def evaluate(eval_nodes, tiny_flux, tiny_clip, tiny_vae, folder, **changes):
    inputs = dict(model=tiny_flux, clip=tiny_clip, vae=tiny_vae, prompts=PROMPTS, reward=BrightnessReward(), loras="",
                  images_per_prompt=2, seed=3, width=32, height=32, sampling_steps=3, sampler_name="euler",
                  scheduler="simple", cfg=1.0, guidance=3.5, folder=folder, reward_2=ColorTargetReward())
    inputs.update(changes)
    return eval_nodes.LeapAlignEvaluate.execute(**inputs)


def test_scores_are_the_rewards_of_stock_ksampler_images(eval_nodes, tiny_flux, tiny_clip, tiny_vae, comfy_home):
    import nodes as comfy_nodes

    result = evaluate(eval_nodes, tiny_flux, tiny_clip, tiny_vae, "leapalign_eval/node_test")
    grid, table = result.result
    assert grid.dim() == 4 and grid.shape[-1] == 3
    assert "builtin_brightness" in table and "builtin_color_target" in table
    folder = comfy_home / "output" / "leapalign_eval" / "node_test"
    with open(folder / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    # Independently: stock CLIPTextEncode + FluxGuidance + KSampler + VAEDecode for the second prompt.
    (positive,) = comfy_nodes.CLIPTextEncode().encode(tiny_clip, PROMPTS[1])
    positive = [[cond, {**options, "guidance": 3.5}] for cond, options in positive]  # what FluxGuidance does
    (negative,) = comfy_nodes.CLIPTextEncode().encode(tiny_clip, "")
    latent = {"samples": torch.zeros((2, 4, 4, 4))}
    (samples,) = comfy_nodes.KSampler().sample(tiny_flux, 3, 3, 1.0, "euler", "simple", positive, negative, latent)
    (images,) = comfy_nodes.VAEDecode().decode(tiny_vae, samples)
    expected = BrightnessReward()(images[..., :3].movedim(-1, 1).float(), PROMPTS[1])
    got = [float(r["builtin_brightness"]) for r in rows if r["prompt"] == PROMPTS[1]]
    assert got == pytest.approx(expected.tolist(), abs=1e-5)


def test_missing_lora_escape_and_empty_prompts(eval_nodes, tiny_flux, tiny_clip, tiny_vae):
    with pytest.raises(ValueError, match="LeapAlign Evaluate: LoRA 'nope.safetensors' is not in models/loras"):
        evaluate(eval_nodes, tiny_flux, tiny_clip, tiny_vae, "leapalign_eval/x", loras="nope.safetensors:0.5")
    with pytest.raises(ValueError, match="must be a path inside"):
        evaluate(eval_nodes, tiny_flux, tiny_clip, tiny_vae, "../outside")
    with pytest.raises(ValueError, match="prompt list is empty"):
        evaluate(eval_nodes, tiny_flux, tiny_clip, tiny_vae, "leapalign_eval/x", prompts=[])
    assert eval_nodes.parse_loras("a.safetensors\n# note\nb/c.safetensors:0.5\n") == [
        ("a.safetensors", 1.0), ("b/c.safetensors", 0.5)]


def test_hpsv3_loads_through_the_reward_loader_node(pack_import, comfy_home):
    """The tiny HPSv3 folder in models/reward_models, picked by its file as ComfyUI lists it."""
    import folder_paths

    from leapalign.rewards.tiny_hpsv3 import write_tiny_hpsv3

    reward_nodes = pack_import("nodes.reward_nodes")
    folder = comfy_home / "models" / "reward_models"
    write_tiny_hpsv3(folder / "HPSv3")
    folder_paths.add_model_folder_path("reward_models", str(folder), is_default=True)
    folder_paths.filename_list_cache.pop("reward_models", None)
    files = reward_nodes.LeapAlignRewardLoader.INPUT_TYPES()["required"]["model_file"][1]["options"]
    assert "HPSv3/HPSv3.safetensors" in files
    reward, info = reward_nodes.LeapAlignRewardLoader.execute("hpsv3", "HPSv3/HPSv3.safetensors", "float32").result
    assert reward.name == "hpsv3" and "default hinge lambda 13.5" in info
    images = torch.rand(1, 3, 56, 56, requires_grad=True)
    reward(images, ["a red apple"]).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
