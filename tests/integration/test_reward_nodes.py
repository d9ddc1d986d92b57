"""Reward nodes inside the booted ComfyUI: folder registration, loading, scoring, CSV output."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def reward_nodes(pack_import):
    return pack_import("nodes.reward_nodes")


@pytest.fixture(scope="module")
def reward_dir(reward_nodes, comfy_home):
    """A reward_models folder in the test's models dir, holding tiny checkpoints in the real layouts."""
    import folder_paths

    from leapalign.rewards import tiny_checkpoints as tiny

    folder = comfy_home / "models" / "reward_models"
    folder.mkdir(parents=True, exist_ok=True)
    tiny.write_tiny_clip_folder(folder / "PickScore_v1")
    tiny.write_tiny_image_reward(folder / "ImageReward")
    folder_paths.add_model_folder_path("reward_models", str(folder), is_default=True)
    folder_paths.filename_list_cache.pop("reward_models", None)
    return folder


def test_reward_models_folder_is_registered(reward_nodes, comfy):
    import folder_paths

    paths, extensions = folder_paths.folder_names_and_paths["reward_models"]
    assert any(p.endswith("reward_models") for p in paths)
    assert {".pt", ".pth", ".safetensors", ".bin"} <= set(extensions)


def test_loader_lists_files_and_loads_real_and_builtin_rewards(reward_nodes, reward_dir):
    loader = reward_nodes.LeapAlignRewardLoader
    files = reward_nodes.LeapAlignRewardLoader.INPUT_TYPES()["required"]["model_file"][1]["options"]
    assert "PickScore_v1/model.safetensors" in files and "ImageReward/ImageReward.pt" in files
    reward, info = loader.execute("pickscore", "PickScore_v1/model.safetensors", "float32").result
    assert reward.name == "pickscore" and "default hinge lambda" in info
    images = torch.rand(2, 3, 40, 40, requires_grad=True)
    reward(images, ["a photo of a cat"]).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    color, _ = loader.execute("builtin_color_target", reward_nodes.NO_FILE, "float32", "0, 0, 1").result
    assert color.target == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="LeapAlign Reward Loader: imagereward needs a file"):
        loader.execute("imagereward", reward_nodes.NO_FILE)
    with pytest.raises(ValueError, match=r"LeapAlign Reward Loader: HPSv2.1: cannot load .*ImageReward.pt"):
        loader.execute("hpsv2.1", "ImageReward/ImageReward.pt")


def test_score_node_reads_comfy_image_layout_and_writes_csv(reward_nodes, comfy_home):
    import folder_paths

    loader, scorer = reward_nodes.LeapAlignRewardLoader, reward_nodes.LeapAlignRewardScore
    brightness, _ = loader.execute("builtin_brightness", reward_nodes.NO_FILE, "float32").result
    images = torch.zeros(2, 8, 6, 3)  # ComfyUI IMAGE: [B, H, W, C]
    images[1] = 1.0
    mean, scores, table = scorer.execute(brightness, images, "a\nb", csv_name="leapalign/test_scores.csv").result
    assert scores == pytest.approx([0.0, 1.0]) and mean == pytest.approx(0.5)
    csv_path = folder_paths.get_output_directory() + "/leapalign/test_scores.csv"
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["prompt"] for r in rows] == ["a", "b"] and float(rows[1]["builtin_brightness"]) == pytest.approx(1.0)
    assert "written to" in table
    with pytest.raises(ValueError, match="3 prompts for 2 images"):
        scorer.execute(brightness, images, "a\nb\nc")
    with pytest.raises(ValueError, match="must be a path inside"):
        scorer.execute(brightness, images, "a", csv_name="../escape.csv")


def test_sum_and_folder_nodes(reward_nodes):
    import folder_paths

    loader = reward_nodes.LeapAlignRewardLoader
    bright, _ = loader.execute("builtin_brightness", reward_nodes.NO_FILE, "float32").result
    red, _ = loader.execute("builtin_color_target", reward_nodes.NO_FILE, "float32", "1, 0, 0").result
    (mix,) = reward_nodes.LeapAlignRewardSum.execute(bright, 1.0, red, 2.0).result
    folder = folder_paths.get_input_directory() + "/leapalign_eval_images"
    import os

    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.full((5, 5, 3), (255, 0, 0), dtype=np.uint8)).save(folder + "/red.png")
    mean, table = reward_nodes.LeapAlignRewardScoreFolder.execute(mix, "leapalign_eval_images", "a red square",
                                                                  csv_name="").result
    assert mean == pytest.approx(0.299, abs=1e-5)  # brightness of red + 2 * 0 distance
    assert "red.png" in table
    with pytest.raises(ValueError, match="LeapAlign Reward Score Folder: image folder"):
        reward_nodes.LeapAlignRewardScoreFolder.execute(mix, "does_not_exist", "p")


def test_nodes_are_registered_with_comfyui(reward_nodes, comfy):
    import nodes

    for node in reward_nodes.NODES:
        node_id = node.GET_SCHEMA().node_id
        assert nodes.NODE_CLASS_MAPPINGS[node_id] is node
        assert nodes.NODE_CLASS_MAPPINGS[node_id].CATEGORY == "LeapAlign"
