"""Loading errors name the reward, the path and what was expected; loading never touches the network."""

import shutil
import socket
import sys

import pytest
import torch

from leapalign.rewards import MissingRewardDependency, RewardLoadError, load_reward
from leapalign.rewards import tiny_checkpoints as tiny


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward_models")
    return {
        "root": root,
        "hps": root / "HPS_v2.1_compressed.pt",
        "hps_config": tiny.write_tiny_hps(root / "HPS_v2.1_compressed.pt"),
        "pickscore": tiny.write_tiny_clip_folder(root / "PickScore_v1"),
        "aesthetic": tiny.write_tiny_aesthetic(root / "aesthetic"),
        "imagereward": tiny.write_tiny_image_reward(root / "ImageReward"),
    }


def check_message(exc: pytest.ExceptionInfo, reward: str, path, *fragments: str) -> None:
    message = str(exc.value)
    assert message.startswith(f"{reward}: cannot load ")
    assert str(path) in message and "Expected" in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("kind, reward, expected", [
    ("hpsv2.1", "HPSv2.1", "HPS_v2.1_compressed.pt"),
    ("aesthetic", "LAION aesthetic", "sac+logos+ava1-l14-linearMSE.pth"),
    ("imagereward", "ImageReward", "ImageReward.pt"),
])
def test_missing_file(kind, reward, expected, tmp_path):
    missing = tmp_path / "nothing_here.pt"
    with pytest.raises(RewardLoadError) as exc:
        load_reward(kind, missing)
    check_message(exc, reward, missing, expected)


def test_missing_transformers_folder(tmp_path):
    with pytest.raises(RewardLoadError) as exc:
        load_reward("pickscore", tmp_path / "PickScore_v1")
    check_message(exc, "PickScore", tmp_path / "PickScore_v1", "folder does not exist", "yuvalkirstain/PickScore_v1")


def test_wrong_checkpoint_names_what_it_looks_like(ckpts):
    with pytest.raises(RewardLoadError) as exc:
        load_reward("hpsv2.1", ckpts["imagereward"] / "ImageReward.pt", model_config=ckpts["hps_config"])
    check_message(exc, "HPSv2.1", ckpts["imagereward"] / "ImageReward.pt", "ImageReward checkpoint")
    with pytest.raises(RewardLoadError) as exc:
        load_reward("aesthetic", ckpts["hps"])
    check_message(exc, "LAION aesthetic", ckpts["hps"], "open_clip CLIP state dict", "layers.0.weight")
    with pytest.raises(RewardLoadError) as exc:
        load_reward("imagereward", ckpts["aesthetic"])
    check_message(exc, "ImageReward", ckpts["aesthetic"], "aesthetic predictor MLP")
    with pytest.raises(RewardLoadError) as exc:  # a folder without config.json
        load_reward("pickscore", ckpts["imagereward"])
    check_message(exc, "PickScore", ckpts["imagereward"] / "config.json", "does not exist")


def test_wrong_architecture_size(ckpts):
    config = {**ckpts["hps_config"], "embed_dim": 24}  # e.g. a ViT-L file given to the ViT-H model
    with pytest.raises(RewardLoadError) as exc:
        load_reward("hpsv2.1", ckpts["hps"], model_config=config)
    check_message(exc, "HPSv2.1", ckpts["hps"], "do not fit the architecture", "size mismatch")


def test_non_clip_config_is_refused(ckpts, tmp_path):
    folder = tmp_path / "not_clip"
    shutil.copytree(ckpts["pickscore"], folder)
    (folder / "config.json").write_text('{"model_type": "blip"}')
    with pytest.raises(RewardLoadError) as exc:
        load_reward("clip_score", folder)
    check_message(exc, "CLIP score", folder, "model_type 'blip'")


def test_missing_tokenizer_says_where_to_get_it(ckpts, tmp_path):
    folder = tmp_path / "PickScore_v1"
    shutil.copytree(ckpts["pickscore"], folder)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(RewardLoadError) as exc:
        load_reward("pickscore", folder)
    check_message(exc, "PickScore", folder, "no tokenizer files", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K")


def truncate(source, target):
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def test_truncated_files(ckpts, tmp_path):
    hps = truncate(ckpts["hps"], tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(RewardLoadError) as exc:
        load_reward("hpsv2.1", hps, model_config=ckpts["hps_config"])
    check_message(exc, "HPSv2.1", hps, "truncated")

    folder = tmp_path / "ImageReward"
    shutil.copytree(ckpts["imagereward"], folder)
    truncate(ckpts["imagereward"] / "ImageReward.pt", folder / "ImageReward.pt")
    with pytest.raises(RewardLoadError) as exc:
        load_reward("imagereward", folder)
    check_message(exc, "ImageReward", folder / "ImageReward.pt", "truncated")

    pick = tmp_path / "PickScore_v1"
    shutil.copytree(ckpts["pickscore"], pick)
    truncate(ckpts["pickscore"] / "model.safetensors", pick / "model.safetensors")
    with pytest.raises(RewardLoadError) as exc:
        load_reward("pickscore", pick)
    check_message(exc, "PickScore", pick, "could not load the weights")


class ArbitraryObject:
    """Unpickling this would run code from the file's author; weights_only loading must refuse it."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(1)}, "hook": ArbitraryObject()}, path)
    with pytest.raises(RewardLoadError) as exc:
        load_reward("hpsv2.1", path)
    check_message(exc, "HPSv2.1", path, "truncated or not a weights file")


def test_missing_optional_dependency_names_the_extra(ckpts, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(MissingRewardDependency, match=r"pip install leapalign-comfy\[rewards\]"):
        load_reward("hpsv2.1", ckpts["hps"], model_config=ckpts["hps_config"])


def test_no_network_attempt_while_loading_and_scoring(ckpts, monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during reward loading")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    images = torch.rand(1, 3, 48, 40, requires_grad=True)
    for kind, path, options in [
        ("hpsv2.1", ckpts["hps"], {"model_config": ckpts["hps_config"]}),
        ("pickscore", ckpts["pickscore"], {}),
        ("clip_score", ckpts["pickscore"] / "model.safetensors", {}),  # a file inside the folder works too
        ("aesthetic", ckpts["aesthetic"], {}),
        ("imagereward", ckpts["imagereward"] / "ImageReward.pt", {}),
    ]:
        reward = load_reward(kind, path, **options)
        reward(images, ["a photo of a cat"]).sum().backward()
    assert attempts == []
    assert images.grad is not None and torch.isfinite(images.grad).all()
