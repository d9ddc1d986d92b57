"""Every real reward, loaded from a tiny random checkpoint in the real format through the real
loading path, against an independent computation of its formula; gradients reach the pixels."""

import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from reward_references import hpsv2_preprocess_val

from leapalign.rewards import load_reward
from leapalign.rewards import tiny_checkpoints as tiny
from leapalign.rewards.image_reward import SCORE_MEAN, SCORE_STD
from leapalign.rewards.preprocess import clip_preprocess

PROMPTS = ["a photo of a cat", "a red apple on the table"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward_models")
    hps_config = tiny.write_tiny_hps(root / "HPS_v2.1_compressed.pt")
    return {
        "root": root,
        "hps_config": hps_config,
        "pickscore": tiny.write_tiny_clip_folder(root / "PickScore_v1", seed=1),
        "clip": tiny.write_tiny_clip_folder(root / "clip-vit", seed=2),
        "aesthetic": tiny.write_tiny_aesthetic(root / "aesthetic", seed=3),
        "imagereward": tiny.write_tiny_image_reward(root / "ImageReward", seed=4),
    }


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, 40, 52)


def assert_pixel_gradient(reward, images):
    pixels = images.clone().requires_grad_(True)
    scores = reward(pixels, PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    (grad,) = torch.autograd.grad(scores.sum(), pixels)
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).abs().sum(dim=1) > 0).all()  # every image gets a gradient
    assert not any(p.requires_grad for p in reward.parameters())  # frozen weights


def test_hpsv21_matches_open_clip_scoring(ckpts, images, tmp_path):
    import open_clip

    reward = load_reward("hpsv2.1", ckpts["root"] / "HPS_v2.1_compressed.pt", model_config=ckpts["hps_config"])
    # Independent: open_clip loads the same file through its own checkpoint loader, and the HPSv2
    # formula is applied to its forward outputs (normalized features, diagonal of image @ text.T).
    (tmp_path / "leapalign-tiny-hps.json").write_text(json.dumps(ckpts["hps_config"]))
    open_clip.add_model_config(tmp_path / "leapalign-tiny-hps.json")
    ref_model, _, _ = open_clip.create_model_and_transforms(
        "leapalign-tiny-hps", pretrained=str(ckpts["root"] / "HPS_v2.1_compressed.pt"), output_dict=True)
    ref_model.eval()
    tokens = open_clip.get_tokenizer("leapalign-tiny-hps")(PROMPTS)
    pixels = reward.pixels(images)
    with torch.no_grad():
        out = ref_model(pixels, tokens)
        expected = torch.diagonal(out["image_features"] @ out["text_features"].T)
    scores = reward(images, PROMPTS)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    assert scores.abs().max() <= 1.0 + 1e-6  # a cosine
    # Whole pipeline with hpsv2's own preprocessing (longest side + pad; test_rewards_reference_scores.py
    # does this at the real size on many images).
    pil = Image.fromarray((images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    with torch.no_grad():
        out = ref_model(hpsv2_preprocess_val(32)(pil)[None], tokens[:1])
        expected_pil = (out["image_features"] @ out["text_features"].T)[0, 0]
    quantized = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    assert abs(float(reward(quantized, PROMPTS[:1])[0]) - float(expected_pil)) < 1e-5
    assert reward.default_lambda == 0.55
    assert_pixel_gradient(reward, images)


def _clip_reference(folder, pixels):
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
    tokens = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    image, text = out.image_embeds, out.text_embeds  # library-normalized projections
    cosine = (image * text).sum(-1)
    return model, cosine, torch.diagonal(out.logits_per_image)


def test_pickscore_is_logit_scale_times_cosine(ckpts, images):
    reward = load_reward("pickscore", ckpts["pickscore"])
    model, cosine, logits = _clip_reference(ckpts["pickscore"], reward.pixels(images))
    scores = reward(images, PROMPTS)
    # PickScore = exp(logit_scale) * cosine, which is exactly CLIP's logits_per_image diagonal.
    torch.testing.assert_close(scores, logits, rtol=1e-5, atol=1e-5)
    logit_scale = float(model.logit_scale.detach().exp())
    torch.testing.assert_close(scores, logit_scale * cosine, rtol=1e-5, atol=1e-5)
    assert reward.default_lambda == pytest.approx(0.4 * logit_scale)
    assert_pixel_gradient(reward, images)


def test_pickscore_matches_processor_pipeline_on_sample_image(ckpts):
    from transformers import CLIPImageProcessorPil

    reward = load_reward("pickscore", ckpts["pickscore"])
    y, x = np.mgrid[0:90, 0:70].astype(np.float32)
    array = np.stack([0.5 + 0.5 * np.sin(x / 9), 0.5 + 0.5 * np.cos(y / 13), (x + y) / 160], -1)
    image = Image.fromarray((array * 255).round().astype(np.uint8))
    processor = CLIPImageProcessorPil.from_pretrained(str(ckpts["pickscore"]), local_files_only=True)
    _, _, logits = _clip_reference(ckpts["pickscore"], processor([image, image], return_tensors="pt")["pixel_values"])
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    scores = reward(pixels.expand(2, -1, -1, -1), PROMPTS)
    assert (scores - logits).abs().max() < 0.02 * float(reward.logit_scale)


def test_clip_score_is_100_cosine(ckpts, images):
    reward = load_reward("clip_score", ckpts["clip"])
    _, cosine, _ = _clip_reference(ckpts["clip"], reward.pixels(images))
    torch.testing.assert_close(reward(images, PROMPTS), 100 * cosine, rtol=1e-5, atol=1e-4)
    assert_pixel_gradient(reward, images)


def test_aesthetic_is_mlp_of_normalized_clip_image_embedding(ckpts, images):
    from transformers import CLIPModel

    reward = load_reward("aesthetic", ckpts["aesthetic"])
    clip = CLIPModel.from_pretrained(str(ckpts["aesthetic"].parent / "clip-vit-large-patch14"), local_files_only=True)
    state = torch.load(ckpts["aesthetic"], weights_only=True)
    s = reward.settings
    with torch.no_grad():
        embedding = clip.visual_projection(clip.vision_model(pixel_values=clip_preprocess(
            images, s.resize, s.mean, s.std, crop_size=s.crop, crop_offset="round")).pooler_output).numpy()
    x = embedding / np.linalg.norm(embedding, axis=-1, keepdims=True)
    for index in (0, 2, 4, 6, 7):  # linear layers, no activations, dropout off
        x = x @ state[f"layers.{index}.weight"].numpy().T + state[f"layers.{index}.bias"].numpy()
    np.testing.assert_allclose(reward(images, PROMPTS).numpy(), x[:, 0], rtol=1e-4, atol=1e-6)
    # The prompt is ignored.
    torch.testing.assert_close(reward(images, ["x", "y"]), reward(images, PROMPTS))
    assert_pixel_gradient(reward, images)


def test_image_reward_matches_independent_vision_tower_and_head(ckpts, images):
    import timm
    from transformers import BertTokenizer

    folder = ckpts["imagereward"]
    reward = load_reward("imagereward", folder)
    state = torch.load(folder / "ImageReward.pt", weights_only=True)
    # Independent vision tower: timm's ViT (the architecture BLIP's ViT copies) on the file's own keys.
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=16, embed_dim=128, depth=1, num_heads=2, mlp_ratio=2.0, qkv_bias=True,
        num_classes=0, global_pool="", norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))
    prefix = "blip.visual_encoder."
    vit.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    vit.eval()
    pixels = clip_preprocess(images, 32)
    with torch.no_grad():
        image_tokens = vit.forward_features(pixels)
        torch.testing.assert_close(reward.vision(pixel_values=pixels).last_hidden_state, image_tokens,
                                   rtol=1e-4, atol=1e-5)
        tokens = BertTokenizer.from_pretrained(str(folder), local_files_only=True)(
            PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        states = reward.text(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                             encoder_hidden_states=image_tokens,
                             encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long)).last_hidden_state
    x = states[:, 0, :].numpy()
    for index in (0, 2, 4, 6, 7):
        x = x @ state[f"mlp.layers.{index}.weight"].numpy().T + state[f"mlp.layers.{index}.bias"].numpy()
    expected = (x[:, 0] - SCORE_MEAN) / SCORE_STD
    np.testing.assert_allclose(reward(images, PROMPTS).numpy(), expected, rtol=1e-4, atol=1e-4)
    assert_pixel_gradient(reward, images)


def test_image_reward_text_side_reads_the_prompt(ckpts, images):
    reward = load_reward("imagereward", ckpts["imagereward"])
    same = reward(images[:1].expand(2, -1, -1, -1), PROMPTS)
    assert (same[0] - same[1]).abs() > 1e-4


def test_bfloat16_policy_scores_in_float32_close_to_float32(ckpts, images):
    reward = load_reward("clip_score", ckpts["clip"])
    full = reward(images, PROMPTS)
    reward.to(dtype=torch.bfloat16)
    half = reward(images.to(torch.bfloat16), PROMPTS)
    assert half.dtype == torch.float32 and reward.weight_dtype == torch.bfloat16
    assert (half - full).abs().max() < 3.0  # 100 x cosine in bf16
