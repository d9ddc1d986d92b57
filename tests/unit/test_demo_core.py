"""The digits world's pure-torch parts: codec, prompts, reward/judge, evaluation, report, shipped files."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from leapalign.demo import spec
from leapalign.demo.classifiers import JudgeNet, RewardNet, accuracy, to_gray, train_classifier
from leapalign.demo.codec import DigitsCodec, latent_to_pixels, pixels_to_latent
from leapalign.demo.digits import load_digits_data, split_indices
from leapalign.demo.evaluate import DigitsScore, score_digits
from leapalign.demo.prompts import all_digit_prompts, allowed_mask, digit_prompt, parse_digit
from leapalign.demo.report import CELL, format_scores, sample_grid
from leapalign.demo.reward import DigitJudge, DigitReward
from leapalign.rewards.base import RewardLoadError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_digits_data()


@pytest.fixture(scope="module")
def test_split(digits):
    return digits.subset(split_indices(len(digits))["test"])


def pictures_of(images8: torch.Tensor) -> torch.Tensor:
    """8x8 digits in [-1, 1] -> the 16x16 RGB pictures in [0, 1] the world's VAE decodes to."""
    return ((F.interpolate(images8, scale_factor=2, mode="nearest") + 1) / 2).expand(-1, 3, -1, -1)


# ----------------------------------------------------------------------------- codec

def test_codec_regroups_pixels_exactly():
    digit = torch.randn(3, 1, 8, 8)
    latent = pixels_to_latent(digit)
    assert latent.shape == (3, 16, 2, 2)
    assert torch.equal(latent[1, :, 0, 1], digit[1, 0, 0:4, 4:8].reshape(16))  # channel = pixel in the 4x4 block
    assert torch.equal(latent_to_pixels(latent), digit)


def test_codec_undoes_flux_latent_format_so_the_model_sees_pixels():
    codec = DigitsCodec()
    digit = torch.rand(2, 1, 8, 8) * 2 - 1
    picture = F.interpolate(digit, scale_factor=2, mode="nearest").expand(-1, 3, -1, -1)
    z = codec.encode(picture)
    model_space = (z - 0.1159) * 0.3611  # ComfyUI's Flux latent format, process_in
    torch.testing.assert_close(model_space, pixels_to_latent(digit), rtol=0, atol=1e-6)
    torch.testing.assert_close(codec.decode(z), picture, rtol=0, atol=1e-6)
    assert codec.decode(z).shape == (2, 3, 16, 16)


def test_codec_decode_is_differentiable_and_linear():
    codec = DigitsCodec()
    z = torch.randn(1, 16, 2, 2, requires_grad=True)
    codec.decode(z).sum().backward()
    # every latent value feeds 2x2 upsampled pixels x 3 channels, scaled by 0.3611
    torch.testing.assert_close(z.grad, torch.full_like(z, 12 * 0.3611))


def test_codec_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 16\]"):
        DigitsCodec().encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="16, h, w"):
        DigitsCodec().decode(torch.zeros(1, 4, 2, 2))


# ----------------------------------------------------------------------------- prompts

def test_prompts_round_trip_and_parse():
    assert all_digit_prompts()[7] == "a handwritten seven"
    assert [parse_digit(p) for p in all_digit_prompts()] == list(range(10))
    assert parse_digit("A Handwritten 3") == 3
    assert parse_digit(digit_prompt(0, "the digit {word}, neatly")) == 0
    with pytest.raises(ValueError, match="several digits"):
        parse_digit("a seven next to a three")
    with pytest.raises(ValueError, match="no digit"):
        parse_digit("a cat")


def test_allowed_mask_named_digits_or_any():
    mask = allowed_mask(["a handwritten seven", "a 1 or a two", "a handwritten digit"])
    assert mask[0].nonzero().flatten().tolist() == [7]
    assert mask[1].nonzero().flatten().tolist() == [1, 2]
    assert bool(mask[2].all())


# ----------------------------------------------------------------------------- reward and judge

def test_reward_is_log_probability_of_allowed_digits_with_gradients():
    torch.manual_seed(0)
    reward = DigitReward(RewardNet())
    images = torch.rand(3, 3, 16, 16, requires_grad=True)
    scores = reward(images, ["a handwritten seven", "a 1 or a two", "a handwritten digit"])
    log_probs = reward.net(to_gray(images.detach(), 8)).log_softmax(1)
    expected = torch.stack([log_probs[0, 7], torch.logsumexp(log_probs[1, [1, 2]], 0), torch.logsumexp(log_probs[2], 0)])
    torch.testing.assert_close(scores.detach(), expected, rtol=0, atol=1e-6)
    assert abs(float(scores[2].detach())) < 1e-6  # any digit allowed: certain
    scores[0].backward()
    assert images.grad is not None and float(images.grad[0].abs().sum()) > 0
    assert float(images.grad[1:].abs().sum()) == 0.0
    assert not any(p.requires_grad for p in reward.parameters())
    assert reward.name == "digits-reward" and reward.default_lambda == pytest.approx(math.log(0.9))


def test_reward_files_load_and_bad_files_are_named(tmp_path):
    with pytest.raises(RewardLoadError, match="does not exist"):
        DigitReward.from_file(tmp_path / "missing.safetensors")
    wrong = tmp_path / "judge_as_reward.safetensors"
    save_file(JudgeNet().state_dict(), str(wrong))
    with pytest.raises(RewardLoadError, match="RewardNet"):
        DigitReward.from_file(wrong)


def test_classifier_training_is_deterministic(digits):
    small = digits.subset(torch.arange(64))
    a = train_classifier(JudgeNet(), small, steps=3, seed=5, batch=16)
    b = train_classifier(JudgeNet(), small, steps=3, seed=5, batch=16)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_splits_are_disjoint_and_cover_the_data(digits):
    split = split_indices(len(digits))
    sets = {name: set(idx.tolist()) for name, idx in split.items()}
    assert not (sets["reward"] & sets["judge"]) and not (sets["reward"] & sets["test"]) and not (sets["judge"] & sets["test"])
    assert set().union(*sets.values()) == set(range(len(digits)))


# ----------------------------------------------------------------------------- shipped files

def test_shipped_files_are_small_and_say_how_they_were_made():
    total = 0
    for name in (spec.WORLD_FILE, spec.REWARD_FILE, spec.JUDGE_FILE):
        path = spec.ASSETS_DIR / name
        total += path.stat().st_size
        with safe_open(str(path), framework="pt") as handle:
            note = json.loads(handle.metadata()["leapalign.demo"])
        assert note["made_by"] == "scripts/make_demo_world.py"
        assert note["recipe"]["seed"] and note["torch"]
    assert total < 3_000_000


def test_shipped_reward_and_judge_classify_held_out_digits(test_split):
    reward, judge = DigitReward.from_file(), DigitJudge.from_file()
    assert isinstance(reward.net, RewardNet) and isinstance(judge.net, JudgeNet)  # different architectures
    assert accuracy(reward.net, test_split) >= 0.95
    assert accuracy(judge.net, test_split) >= 0.95


def test_score_digits_matches_classifier_accuracy(test_split):
    reward, judge = DigitReward.from_file(), DigitJudge.from_file()
    pictures = pictures_of(test_split.images)
    prompts = [digit_prompt(int(d)) for d in test_split.labels]
    score = score_digits(pictures, prompts, reward, judge)
    assert score.samples == len(prompts)
    assert score.judge_accuracy == pytest.approx(accuracy(judge.net, test_split), abs=1e-6)
    assert score.reward_accuracy == pytest.approx(accuracy(reward.net, test_split), abs=1e-6)
    wrong = [digit_prompt((int(d) + 1) % 10) for d in test_split.labels]
    worse = score_digits(pictures, wrong, reward, judge)
    assert worse.judge_accuracy < 0.05 and worse.mean_reward < score.mean_reward - 3


# ----------------------------------------------------------------------------- report

def test_sample_grid_layout_and_score_table():
    pictures = torch.rand(10, 3, 3, 16, 16)
    grid = sample_grid([("before", pictures), ("after", pictures)], all_digit_prompts(),
                       correct=[torch.ones(10, 3, dtype=torch.bool), torch.zeros(10, 3, dtype=torch.bool)])
    assert grid.mode == "RGB" and grid.height > 10 * CELL and grid.width > 6 * CELL
    before = DigitsScore(240, 0.4, 0.45, -2.5, [0.4] * 10)
    after = DigitsScore(240, 0.95, 1.0, -0.02, [0.95] * 10)
    table = "\n".join(format_scores(before, after))
    assert "40.0%" in table and "95.0%" in table and "+55.0pt" in table and "+2.480" in table
    with pytest.raises(ValueError, match="rows"):
        sample_grid([("x", pictures[:3])], all_digit_prompts())


def test_demo_reload_check_tolerates_rounding_and_catches_a_real_difference():
    """The demo's "matches (max diff x)" line: rounding passes, a changed score fails loudly."""
    from leapalign.demo.evaluate import DigitsScore
    from trainer_cli.demo import reload_matches

    trained = DigitsScore(samples=240, judge_accuracy=0.75, reward_accuracy=0.8, mean_reward=-0.41234567,
                          judge_accuracy_per_digit=[0.75] * 10)
    rounded = DigitsScore(samples=240, judge_accuracy=0.75, reward_accuracy=0.8, mean_reward=-0.41234571,
                          judge_accuracy_per_digit=[0.75] * 10)
    ok, diff = reload_matches(trained, rounded)
    assert ok and 0 < diff < 1e-6
    worse = DigitsScore(samples=240, judge_accuracy=0.70, reward_accuracy=0.8, mean_reward=-0.45,
                        judge_accuracy_per_digit=[0.70] * 10)
    ok, diff = reload_matches(trained, worse)
    assert not ok and diff == pytest.approx(0.05)
