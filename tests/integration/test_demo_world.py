"""The digits world as ComfyUI objects: stock nodes work on it, and it leaves room for alignment."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def world(pack_import):
    """(model, clip, vae, reward, judge) loaded by the world node under the executor's inference mode."""
    demo_nodes = pack_import("nodes.demo_nodes")
    with torch.inference_mode():
        return demo_nodes.LeapAlignDigitsWorld.execute().result


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_world_is_made_of_real_comfyui_parts(world, pack_import):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.sd

    model, clip, vae, reward, judge = world
    assert isinstance(model, comfy.model_patcher.ModelPatcher) and isinstance(model.model, comfy.model_base.Flux)
    assert isinstance(clip, comfy.sd.CLIP) and isinstance(vae, comfy.sd.VAE)
    demo_reward = pack_import("leapalign.demo.reward")
    assert isinstance(reward, demo_reward.DigitReward) and isinstance(judge, demo_reward.DigitJudge)
    tensors = [*model.model.diffusion_model.parameters(), *clip.cond_stage_model.parameters(), *reward.parameters()]
    assert not any(t.is_inference() for t in tensors)  # loaded for autograd even inside inference mode


def test_stock_clip_text_encode_pads_t5_to_eight_tokens(world):
    import nodes as comfy_nodes

    _, clip, *_ = world
    (seven,) = comfy_nodes.CLIPTextEncode().encode(clip, "a handwritten seven")
    (three,) = comfy_nodes.CLIPTextEncode().encode(clip, "a handwritten three")
    assert seven[0][0].shape == (1, 8, 64) and seven[0][1]["pooled_output"].shape == (1, 32)
    assert not torch.equal(seven[0][1]["pooled_output"], three[0][1]["pooled_output"])


def test_stock_vae_encode_decode_round_trip_and_latent_format(world):
    import comfy.latent_formats

    import nodes as comfy_nodes
    from leapalign.demo.codec import pixels_to_latent
    from leapalign.demo.digits import load_digits_data

    model, _, vae, *_ = world
    digit = load_digits_data().images[:4]
    picture = ((F.interpolate(digit, scale_factor=2, mode="nearest") + 1) / 2).expand(-1, 3, -1, -1)
    (latent,) = comfy_nodes.VAEEncode().encode(vae, picture.movedim(1, -1))
    assert latent["samples"].shape == (4, 16, 2, 2)
    (decoded,) = comfy_nodes.VAEDecode().decode(vae, latent)
    torch.testing.assert_close(decoded.movedim(-1, 1), picture, rtol=0, atol=1e-5)
    assert isinstance(model.model.latent_format, comfy.latent_formats.Flux)
    model_space = model.model.process_latent_in(latent["samples"])  # what KSampler works on
    torch.testing.assert_close(model_space, pixels_to_latent(digit), rtol=0, atol=1e-5)


def test_pretrained_world_draws_digits_but_often_the_wrong_one(world, pack_import):
    demo_nodes = pack_import("nodes.demo_nodes")
    model, clip, vae, reward, judge = world
    pictures, score, correct = demo_nodes.evaluate_model(model, clip, vae, reward, judge, samples_per_digit=12,
                                                         seed=5, steps=8)
    assert pictures.shape == (10, 12, 3, 16, 16)
    assert 0.2 <= score.judge_accuracy <= 0.7, score  # clearly imperfect: room for alignment
    assert score.mean_reward < -1.0
    # the judge and the reward net mostly agree on what was drawn: the samples are legible digits
    flat = pictures.flatten(0, 1)
    agree = (judge.predict(flat) == reward.predict(flat)).float().mean()
    assert float(agree) >= 0.6
    assert correct.shape == (10, 12) and float(correct.float().mean()) == pytest.approx(score.judge_accuracy)


def test_evaluate_node_writes_grid_and_scores(world, comfy_home):
    from trainer_cli.comfy_runtime import execute_prompt

    prompt = {
        "1": {"class_type": "LeapAlignDigitsWorld", "inputs": {}},
        "2": {"class_type": "LeapAlignDigitsEvaluate",
              "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "reward": ["1", 3], "judge": ["1", 4],
                         "samples_per_digit": 3, "seed": 11, "sampling_steps": 4,
                         "filename_prefix": "demo_tests/eval"}},
    }
    result = execute_prompt(prompt)
    assert result.success, result.error
    folder = comfy_home / "output" / "demo_tests"
    record = json.loads(sorted(folder.glob("eval_*_.json"))[-1].read_text())
    assert record["model"]["samples"] == 30 and 0.0 <= record["model"]["judge_accuracy"] <= 1.0
    with Image.open(sorted(folder.glob("eval_*_.png"))[-1]) as grid:
        grid.verify()
    assert "judge accuracy" in result.outputs["2"]["text"][0]


def test_evaluate_node_refuses_foreign_rewards(world, pack_import):
    demo_nodes = pack_import("nodes.demo_nodes")
    common = pack_import("nodes.common")
    model, clip, vae, reward, _ = world
    with pytest.raises(common.LeapAlignNodeError, match="judge input must come from LeapAlign Digits World"):
        demo_nodes.LeapAlignDigitsEvaluate.execute(model, clip, vae, reward, object(), 1, 0, 2, "x")


def test_demo_workflow_is_an_ordinary_graph_with_the_flux_training_node(comfy):
    from comfy_cli.workflow_to_api import convert_ui_to_api

    from trainer_cli.comfy_runtime import validate_prompt
    from trainer_cli.locate import REPO_ROOT
    from trainer_cli.object_info import build_object_info

    ui = json.loads((REPO_ROOT / "workflows" / "demo_digits.json").read_text())
    api = convert_ui_to_api(ui, build_object_info())
    twin = json.loads((REPO_ROOT / "workflows" / "api" / "demo_digits.api.json").read_text())
    assert api == twin, "workflows/api/demo_digits.api.json is stale: run scripts/build_demo_workflow.py"
    assert validate_prompt(api)
    types = {node["class_type"] for node in api.values()}
    assert {"LeapAlignDigitsWorld", "LeapAlignTrain", "LeapAlignMethod", "LeapAlignSaveLoRA", "LeapAlignPlotMetrics",
            "SaveImage", "LeapAlignDigitsEvaluate"} <= types
    flux = json.loads((REPO_ROOT / "workflows" / "api" / "leapalign_flux_dev_hpsv21_train.api.json").read_text())
    assert "LeapAlignTrain" in {node["class_type"] for node in flux.values()}
    train = next(node["inputs"] for node in api.values() if node["class_type"] == "LeapAlignTrain")
    assert (train["width"], train["height"]) == (16, 16)
    assert api[train["method"][0]]["class_type"] == "LeapAlignMethod"


def test_world_was_pretrained_on_what_stock_clip_text_encode_produces(world):
    """The regeneration script's prompt encoding equals stock CLIPTextEncode on the shipped encoder."""
    import importlib.util

    import nodes as comfy_nodes
    from leapalign.demo.prompts import all_digit_prompts
    from trainer_cli.locate import REPO_ROOT

    spec = importlib.util.spec_from_file_location("make_demo_world", REPO_ROOT / "scripts" / "make_demo_world.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # its dataclasses look their module up
    try:
        spec.loader.exec_module(script)
    finally:
        del sys.modules[spec.name]
    _, clip, *_ = world
    context, pooled = script.encode_prompts(clip)
    for digit, prompt in enumerate(all_digit_prompts()):
        (cond,) = comfy_nodes.CLIPTextEncode().encode(clip, prompt)
        assert torch.equal(cond[0][0][0], context[digit])
        assert torch.equal(cond[0][1]["pooled_output"][0], pooled[digit])
