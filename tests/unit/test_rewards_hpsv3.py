"""HPSv3 from a tiny random Qwen2-VL in the released layout, against transformers' own Qwen2-VL
forward and processor on the same inputs; gradients reach the pixels; bad files are refused."""

import json
import re
import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from leapalign.rewards import RewardLoadError, load_reward
from leapalign.rewards.hpsv3 import (
    BASE_FOLDER_NAME,
    CHECKPOINT_NAME,
    INSTRUCTION,
    PIXELS,
    REWARD_TOKEN,
    SUFFIX,
    load_hpsv3,
)
from leapalign.rewards.qwen_preprocess import smart_resize
from leapalign.rewards.tiny_hpsv3 import CHAT_TEMPLATE, write_tiny_hpsv3

PROMPTS = ["a photo of a cat", "the red apple on the table in the morning"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_hpsv3(tmp_path_factory.mktemp("reward_models") / "HPSv3", seed=5)


@pytest.fixture(scope="module")
def reward(folder):
    return load_hpsv3(folder, dtype=torch.float32)


@pytest.fixture(scope="module")
def reference(folder):
    """transformers' Qwen2VLForConditionalGeneration + Qwen2VLProcessor, built independently of leapalign."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    base = folder / BASE_FOLDER_NAME
    state = load_file(str(folder / CHECKPOINT_NAME))
    config = Qwen2VLConfig.from_pretrained(str(base), local_files_only=True)
    model = Qwen2VLForConditionalGeneration(config).eval()
    modern = {re.sub(r"^visual\.", "model.visual.", re.sub(r"^model\.", "model.language_model.", k)): v
              for k, v in state.items() if not k.startswith("rm_head.")}
    model.load_state_dict(modern, strict=True)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True, padding_side="right")
    tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(base), local_files_only=True)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    head = {k[len("rm_head."):]: v for k, v in state.items() if k.startswith("rm_head.")}
    return model, processor, head


def reference_inputs(processor, images, prompts):
    """The released HPSv3 recipe: one user message (image, instruction + suffix), chat template, processor."""
    messages = [[{"role": "user", "content": [{"type": "image"},
                                              {"type": "text", "text": INSTRUCTION.format(text_prompt=p) + SUFFIX}]}]
                for p in prompts]
    text = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    return processor(text=text, images=images, padding=True, return_tensors="pt",
                     images_kwargs={"size": {"shortest_edge": PIXELS, "longest_edge": PIXELS}})


def reference_scores(reference, batch, pixel_values=None):
    model, processor, head = reference
    inputs = dict(batch)
    if pixel_values is not None:
        inputs["pixel_values"] = pixel_values
    with torch.no_grad():
        states = model.model(**inputs).last_hidden_state
    token = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    x = states[batch["input_ids"] == token]
    for index in (0, 3):
        x = torch.relu(x @ head[f"{index}.weight"].T + head[f"{index}.bias"])
    return (x @ head["5.weight"].T + head["5.bias"])[:, 0]


def to_pil(image):
    return Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def from_pil(pil):
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.fixture
def images():
    torch.manual_seed(3)
    y, x = torch.meshgrid(torch.linspace(0, 1, 300), torch.linspace(0, 1, 420), indexing="ij")
    smooth = torch.stack([0.5 + 0.4 * torch.sin(7 * x + 3 * y), y, 0.5 + 0.4 * torch.cos(5 * x * y)])
    return torch.stack([smooth, smooth.flip(-1)]).clamp(0, 1)


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as official

    for h, w in [(448, 448), (1024, 1024), (300, 420), (720, 1280), (97, 1500), (2000, 333), (56, 56)]:
        assert smart_resize(h, w, 28, PIXELS, PIXELS) == official(h, w, 28, PIXELS, PIXELS), (h, w)
        assert smart_resize(h, w, 28, 3136, 12845056) == official(h, w, 28, 3136, 12845056), (h, w)


def test_tokens_and_pixels_are_the_processors(reward, reference, images):
    _, processor, _ = reference
    pil = [to_pil(image) for image in images]
    quantized = torch.stack([from_pil(p) for p in pil])
    batch = reference_inputs(processor, pil, PROMPTS)
    pixel_values, grid = reward.pixels(quantized)
    assert torch.equal(grid.cpu(), batch["image_grid_thw"])
    assert grid[0].tolist() == [1, 28, 38]  # 300x420 -> 392x532 (multiples of 28, area >= 256 x 28 x 28)
    # Same patch layout, resize and normalization: PIL's 8-bit passes reproduced up to one 8-bit step
    # (1/255 / std = 0.015 after normalization) at isolated pixels.
    difference = (pixel_values - batch["pixel_values"]).abs()
    assert difference.mean() < 1e-3 and difference.max() < 0.02
    input_ids, mask = reward.tokens(PROMPTS, int(grid[0].prod()) // 4)
    assert torch.equal(input_ids * mask, batch["input_ids"] * batch["attention_mask"])
    assert torch.equal(mask, batch["attention_mask"])


def test_scores_match_transformers_forward(reward, reference, images):
    _, processor, _ = reference
    pil = [to_pil(image) for image in images]
    quantized = torch.stack([from_pil(p) for p in pil])
    batch = reference_inputs(processor, pil, PROMPTS)
    scores = reward(quantized, PROMPTS)
    # Same pixels: the model computation (vision tower, image scatter, M-RoPE, read-out, head) agrees.
    expected = reference_scores(reference, batch, pixel_values=reward.pixels(quantized)[0])
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    # The processor's own pixels: the whole released pipeline.
    official = reference_scores(reference, batch)
    assert (scores - official).abs().max() < 0.01 * official.abs().max()
    assert (scores[0] - scores[1]).abs().item() > 1e-4  # the two inputs are told apart
    assert reward.default_lambda == 13.5 and reward.name == "hpsv3"


def test_gradient_reaches_pixels_and_checkpointing_changes_nothing(folder, images):
    budget = 28 * 28 * 16  # a smaller image budget keeps this CPU test fast; the path is the same
    checkpointed = load_hpsv3(folder, dtype=torch.float32, pixels=budget)
    plain = load_hpsv3(folder, dtype=torch.float32, gradient_checkpointing=False, pixels=budget)
    results, calls = [], []
    for model in (checkpointed, plain):
        handle = model.backbone.language_model.layers[0].self_attn.register_forward_hook(lambda *args, m=model: calls.append(m))
        pixels = images.clone().requires_grad_(True)
        scores = model(pixels, PROMPTS)
        (grad,) = torch.autograd.grad(scores.sum(), pixels)
        results.append((scores.detach(), grad))
        handle.remove()
    # Checkpointed: the first layer's attention ran again during backward; without: once.
    assert [calls.count(checkpointed), calls.count(plain)] == [2, 1]
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-7)
    grad = results[0][1]
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(dim=1) > 0).all()
    assert not any(p.requires_grad for p in checkpointed.parameters())
    assert not checkpointed.rm_head.training  # the head's dropout stays off
    assert checkpointed.backbone.language_model.layers[0].training  # how transformers is told to checkpoint


def test_bf16_default_loads_and_scores(folder, images):
    reward = load_reward("hpsv3", folder / CHECKPOINT_NAME)
    assert reward.backbone.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert reward.rm_head[0].weight.dtype == torch.float32
    scores = reward(images[:1], PROMPTS[:1])
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    reward.to(dtype=torch.float16)  # what the loader node does with a precision choice
    assert reward.backbone.visual.patch_embed.proj.weight.dtype == torch.float16
    assert reward.rm_head[0].weight.dtype == torch.float32


def check_message(exc, path, *fragments):
    message = str(exc.value)
    assert message.startswith("HPSv3: cannot load ") and str(path) in message and "MizzenAI/HPSv3" in message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_files_are_refused(folder, tmp_path):
    with pytest.raises(RewardLoadError) as exc:
        load_reward("hpsv3", tmp_path / "missing")
    check_message(exc, tmp_path / "missing", "does not exist")

    truncated = tmp_path / "truncated"
    shutil.copytree(folder, truncated)
    data = (folder / CHECKPOINT_NAME).read_bytes()
    (truncated / CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(RewardLoadError) as exc:
        load_reward("hpsv3", truncated)
    check_message(exc, truncated / CHECKPOINT_NAME, "could not be read")

    from safetensors.torch import save_file

    other = tmp_path / "other"
    shutil.copytree(folder, other)
    save_file({"visual.conv1.weight": torch.zeros(2), "token_embedding.weight": torch.zeros(2)},
              str(other / CHECKPOINT_NAME))
    with pytest.raises(RewardLoadError) as exc:
        load_reward("hpsv3", other)
    check_message(exc, other / CHECKPOINT_NAME, "open_clip CLIP", "rm_head")

    no_base = tmp_path / "no_base"
    no_base.mkdir()
    shutil.copy(folder / CHECKPOINT_NAME, no_base / CHECKPOINT_NAME)
    with pytest.raises(RewardLoadError) as exc:
        load_reward("hpsv3", no_base)
    check_message(exc, no_base, "no config.json", BASE_FOLDER_NAME)

    wrong_size = tmp_path / "wrong_size"
    shutil.copytree(folder, wrong_size)
    config_path = wrong_size / BASE_FOLDER_NAME / "config.json"
    config = json.loads(config_path.read_text())
    config["text_config"]["intermediate_size"] = 48  # e.g. a 2B config beside the 7B weights
    config_path.write_text(json.dumps(config))
    with pytest.raises(RewardLoadError) as exc:
        load_reward("hpsv3", wrong_size)
    check_message(exc, wrong_size / CHECKPOINT_NAME, "do not fit Qwen2-VL", "size mismatch")

    config["model_type"] = "qwen2_5_vl"
    config_path.write_text(json.dumps(config))
    with pytest.raises(RewardLoadError) as exc:
        load_reward("hpsv3", wrong_size)
    check_message(exc, wrong_size / BASE_FOLDER_NAME, "qwen2_5_vl")


def test_no_network_attempt(folder, monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during reward loading")

    for target, name in [(socket.socket, "connect"), (socket.socket, "connect_ex"),
                         (socket, "create_connection"), (socket, "getaddrinfo")]:
        monkeypatch.setattr(target, name, refuse)
    reward = load_reward("hpsv3", folder, dtype=torch.float32)
    pixels = torch.rand(1, 3, 64, 64, requires_grad=True)
    reward(pixels, PROMPTS[0]).sum().backward()
    assert attempts == [] and torch.isfinite(pixels.grad).all()


def test_both_release_key_layouts_map_to_the_backbone():
    from leapalign.rewards.hpsv3 import backbone_key

    assert backbone_key("visual.blocks.0.norm1.weight") == "visual.blocks.0.norm1.weight"
    assert backbone_key("model.visual.blocks.0.norm1.weight") == "visual.blocks.0.norm1.weight"
    assert backbone_key("model.layers.0.mlp.up_proj.weight") == "language_model.layers.0.mlp.up_proj.weight"
    assert backbone_key("model.language_model.norm.weight") == "language_model.norm.weight"
    assert backbone_key("lm_head.weight") is None and backbone_key("rm_head.0.weight") is None
    assert backbone_key("model.rotary_emb.inv_freq") is None
