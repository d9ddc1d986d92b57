"""Built-in rewards, the weighted sum, the interface's shape/prompt/device rules, folder evaluation."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from leapalign.rewards import (
    REWARD_KINDS,
    BrightnessReward,
    ColorTargetReward,
    WeightedSumReward,
    load_reward,
)
from leapalign.rewards.evaluate import format_table, score_batch, score_folder, write_scores_csv


def test_brightness_value_and_gradient_by_hand():
    images = torch.zeros(2, 3, 4, 5)
    images[0, 0] = 1.0  # pure red: luma 0.299
    images[1] = 0.5  # mid grey: luma 0.5
    images.requires_grad_(True)
    scores = BrightnessReward()(images, ["ignored"])
    torch.testing.assert_close(scores, torch.tensor([0.299, 0.5]))
    (grad,) = torch.autograd.grad(scores.sum(), images)
    expected = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1).expand(2, 3, 4, 5) / 20
    torch.testing.assert_close(grad, expected)


def test_color_target_value_and_gradient_by_hand():
    reward = ColorTargetReward(target=(1.0, 0.0, 0.0))
    images = torch.full((1, 3, 2, 2), 0.5, requires_grad=True)
    score = reward(images, ["x"])
    torch.testing.assert_close(score, torch.tensor([-0.75]))  # 3 channels x 0.25
    (grad,) = torch.autograd.grad(score.sum(), images)
    # d/dx of -(1/4) sum (x - t)^2 = -(x - t) / 2
    expected = torch.tensor([0.25, -0.25, -0.25]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(grad, expected)
    assert float(reward(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 3, 3), ["x"])) == 0.0
    with pytest.raises(ValueError, match="three numbers in"):
        ColorTargetReward(target=(2.0, 0.0, 0.0))


def test_weighted_sum_combines_scores_gradients_and_lambdas():
    bright, red = BrightnessReward(), ColorTargetReward((1.0, 0.0, 0.0))
    mix = WeightedSumReward([bright, red], [2.0, 0.5])
    images = torch.rand(3, 3, 8, 8, requires_grad=True)
    total = mix(images, ["p"])
    torch.testing.assert_close(total, 2.0 * bright(images, ["p"]) + 0.5 * red(images, ["p"]))
    (grad,) = torch.autograd.grad(total.sum(), images)
    (g1,) = torch.autograd.grad(bright(images, ["p"]).sum(), images)
    (g2,) = torch.autograd.grad(red(images, ["p"]).sum(), images)
    torch.testing.assert_close(grad, 2.0 * g1 + 0.5 * g2)
    assert mix.default_lambda == pytest.approx(2.0 * 1.0 + 0.5 * 0.0)
    assert mix.name == "2*builtin_brightness + 0.5*builtin_color_target"
    assert set(mix.parts_scores(images, ["p"])) == {"builtin_brightness", "builtin_color_target"}
    with pytest.raises(ValueError, match="one weight per reward"):
        WeightedSumReward([bright], [1.0, 2.0])


def test_interface_rules():
    reward = BrightnessReward()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        reward(torch.rand(3, 8, 8), ["p"])
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        reward(torch.rand(3, 3, 8, 8), ["a", "b"])
    assert reward(torch.rand(3, 3, 8, 8), "one prompt for all").shape == (3,)
    half = reward(torch.rand(2, 3, 8, 8, dtype=torch.bfloat16), ["p"])
    assert half.dtype == torch.float32
    reward.train()
    assert not reward.training  # a reward stays in eval mode
    assert set(REWARD_KINDS) == {"hpsv2.1", "hpsv3", "pickscore", "imagereward", "clip_score", "aesthetic",
                                 "builtin_brightness", "builtin_color_target"}
    assert load_reward("builtin_color_target", target=(0.0, 0.0, 1.0)).target == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="unknown reward kind 'hps'"):
        load_reward("hps", "x.pt")
    with pytest.raises(ValueError, match="needs a file"):
        load_reward("pickscore")


def test_score_folder_table_and_csv(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, value in [("b.png", 255), ("a.png", 0), ("c.jpg", 128)]:
        Image.fromarray(np.full((6, 7, 3), value, dtype=np.uint8)).save(folder / name)
    (folder / "c.txt").write_text("its own prompt\n")
    rows = score_folder(BrightnessReward(), folder, ["shared prompt"])
    assert [r.image for r in rows] == ["a.png", "b.png", "c.jpg"]
    assert [r.prompt for r in rows] == ["shared prompt", "shared prompt", "its own prompt"]
    assert rows[0].score == pytest.approx(0.0) and rows[1].score == pytest.approx(1.0, abs=1e-6)
    assert rows[2].score == pytest.approx(128 / 255, abs=0.01)  # jpeg
    table = format_table(rows, "brightness")
    assert table.splitlines()[-1].startswith("mean") and "3 images" in table
    path = write_scores_csv(tmp_path / "out" / "scores.csv", rows, "brightness")
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert [r["image"] for r in read] == ["a.png", "b.png", "c.jpg"]
    assert float(read[1]["brightness"]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        score_folder(BrightnessReward(), folder, ["x", "y"])


def test_score_batch_chunks_match_one_call():
    images = torch.rand(5, 3, 4, 4)
    assert score_batch(BrightnessReward(), images, ["p"] * 5, batch_size=2) == pytest.approx(
        BrightnessReward()(images, ["p"]).tolist())
