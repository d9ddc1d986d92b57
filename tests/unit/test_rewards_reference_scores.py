"""End to end: a reward's score of an image file equals its reference's scoring of the same file.

Tiny random models at the real input size (224, large patches), written by tiny_checkpoints in the
real formats. Each reference reads the PNG with PIL and runs its own preprocessing and formula:
hpsv2's ``img_score.score`` steps, the PickScore model card's code, the aesthetic predictor's
``simple_inference.py`` steps; ImageReward's package cannot run here (see reward_references.py), so its
own transform feeds the same networks.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from reward_references import (
    SIZES,
    as_tensor,
    hpsv2_preprocess_val,
    image_reward_transform,
    openai_clip_model_module,
    openai_clip_transform,
    reference_image,
)

from leapalign.rewards import load_reward
from leapalign.rewards import tiny_checkpoints as tiny
from leapalign.rewards.image_reward import SCORE_MEAN, SCORE_STD, TEXT_MAX_LENGTH

PROMPT = "a photo of a red cat"
# The photo-like image at every size; hard edges where the two crop conventions differ by a pixel.
FILES = [("photo", w, h) for w, h in SIZES] + [("edges", 832, 1216), ("edges", 1216, 832)]
# The acceptance bound for HPSv2.1 (cosine) and PickScore (logit scale ~14 x cosine on these models).
SCORE_ATOL = 1e-3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One PNG per (kind, size), read back by both sides exactly as written."""
    root = tmp_path_factory.mktemp("reference_images")
    paths = {}
    for kind, width, height in FILES:
        paths[kind, width, height] = root / f"{kind}-{width}x{height}.png"
        reference_image(kind, width, height).save(paths[kind, width, height])
    return paths


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference_models")
    return {
        "root": root,
        "hps_config": tiny.write_tiny_hps(root / "HPS_v2.1_compressed.pt", image_size=224, patch_size=32),
        "pickscore": tiny.write_tiny_clip_folder(root / "PickScore_v1", seed=5, image_size=224, patch_size=32),
        "clip_score": tiny.write_tiny_clip_folder(root / "clip", seed=6, image_size=224, patch_size=32),
        "aesthetic": tiny.write_tiny_aesthetic(root / "aesthetic", seed=7, image_size=224, patch_size=32),
        "imagereward": tiny.write_tiny_image_reward(root / "ImageReward", seed=8, image_size=224),
    }


def ours(reward, path) -> float:
    with Image.open(path) as image:
        return float(reward(as_tensor(image), [PROMPT])[0])


def test_hpsv21_equals_hpsv2_img_score(models, files, tmp_path, one_thread):
    import open_clip

    reward = load_reward("hpsv2.1", models["root"] / "HPS_v2.1_compressed.pt", model_config=models["hps_config"])
    # hpsv2's network is open_clip's (the issue's check: equal to 1e-7); open_clip loads the same file
    # through its own checkpoint loader. Preprocessing is hpsv2's own preprocess_val.
    (tmp_path / "tiny-hps-224.json").write_text(json.dumps(models["hps_config"]))
    open_clip.add_model_config(tmp_path / "tiny-hps-224.json")
    model = open_clip.create_model("tiny-hps-224", pretrained=str(models["root"] / "HPS_v2.1_compressed.pt"),
                                   output_dict=True).eval()
    tokenizer, preprocess_val = open_clip.get_tokenizer("tiny-hps-224"), hpsv2_preprocess_val(224)
    worst = 0.0
    for path in files.values():
        with torch.no_grad(), Image.open(path) as image:  # img_score.score, minus the cuda autocast
            outputs = model(preprocess_val(image).unsqueeze(0), tokenizer([PROMPT]))
            expected = float(torch.diagonal(outputs["image_features"] @ outputs["text_features"].T)[0])
        worst = max(worst, abs(ours(reward, path) - expected))
    assert worst < SCORE_ATOL


def model_card_scores(folder, paths, processor):
    """The PickScore model card's calc_probs before the softmax: logit_scale.exp() * text @ image.T."""
    from transformers import AutoModel, AutoProcessor

    processor_all = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    images = [Image.open(p).convert("RGB") for p in paths]
    image_inputs = processor(images=images, return_tensors="pt")
    text_inputs = processor_all(text=PROMPT, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        image_embs = model.get_image_features(**image_inputs)
        text_embs = model.get_text_features(**text_inputs)
        image_embs = getattr(image_embs, "pooler_output", image_embs)  # a tensor in transformers 4
        text_embs = getattr(text_embs, "pooler_output", text_embs)
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        return model, (model.logit_scale.exp() * (text_embs @ image_embs.T)[0]).numpy()


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
@pytest.mark.parametrize("kind", ["pickscore", "clip_score"])
def test_clip_folder_rewards_equal_model_card_scoring(models, files, kind, backend, one_thread):
    """PickScore's model card (and torchmetrics' CLIP score) score through transformers' processor:
    PIL in transformers 4, and in 5 either backend (AutoProcessor now picks torchvision's)."""
    from transformers import CLIPImageProcessor, CLIPImageProcessorPil

    folder = models[kind]
    processor_class = CLIPImageProcessorPil if backend == "pil" else CLIPImageProcessor
    processor = processor_class.from_pretrained(str(folder), local_files_only=True)
    paths = list(files.values())
    model, logits = model_card_scores(folder, paths, processor)
    reward = load_reward(kind, folder)
    factor = 100.0 / float(model.logit_scale.detach().exp()) if kind == "clip_score" else 1.0  # CLIP score: 100 x cosine
    expected = logits * factor
    got = np.array([ours(reward, p) for p in paths])
    tolerance = SCORE_ATOL * factor  # the same 1e-3 x logit-scale bound on the cosine for CLIP score
    assert np.abs(got - expected).max() < tolerance, dict(zip([p.name for p in paths], got - expected))


def openai_clip_visual(clip_folder):
    """OpenAI clip's VisionTransformer with the transformers folder's weights (OpenAI's layout)."""
    from transformers import CLIPModel

    hf = CLIPModel.from_pretrained(str(clip_folder), local_files_only=True)
    config = hf.config.vision_config
    assert config.hidden_size // 64 == config.num_attention_heads  # OpenAI's head width
    visual = openai_clip_model_module().VisionTransformer(
        input_resolution=config.image_size, patch_size=config.patch_size, width=config.hidden_size,
        layers=config.num_hidden_layers, heads=config.num_attention_heads, output_dim=hf.config.projection_dim)
    v = {k[len("vision_model."):]: t for k, t in hf.state_dict().items() if k.startswith("vision_model.")}
    state = {"class_embedding": v["embeddings.class_embedding"], "conv1.weight": v["embeddings.patch_embedding.weight"],
             "positional_embedding": v["embeddings.position_embedding.weight"], "proj": hf.visual_projection.weight.T}
    for ours_name, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for p in ("weight", "bias"):
            state[f"{ours_name}.{p}"] = v[f"{theirs}.{p}"]
    for i in range(config.num_hidden_layers):
        a, b = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for p in ("weight", "bias"):
            state[a + f"attn.in_proj_{p}"] = torch.cat([v[b + f"self_attn.{x}_proj.{p}"] for x in "qkv"])
            state[a + f"attn.out_proj.{p}"] = v[b + f"self_attn.out_proj.{p}"]
            state[a + f"ln_1.{p}"], state[a + f"ln_2.{p}"] = v[b + f"layer_norm1.{p}"], v[b + f"layer_norm2.{p}"]
            state[a + f"mlp.c_fc.{p}"], state[a + f"mlp.c_proj.{p}"] = v[b + f"mlp.fc1.{p}"], v[b + f"mlp.fc2.{p}"]
    visual.load_state_dict(state, strict=True)
    return visual.eval()


def test_aesthetic_equals_reference_script(models, files, one_thread):
    """improved-aesthetic-predictor's simple_inference.py: clip.load's preprocess and encode_image,
    numpy L2 normalization, the MLP. The CLIP tower is OpenAI clip's own code with the same weights."""
    path = models["aesthetic"]
    reward = load_reward("aesthetic", path)
    visual = openai_clip_visual(path.parent / "clip-vit-large-patch14")
    preprocess = openai_clip_transform(visual.input_resolution)
    state = torch.load(path, weights_only=True)
    for image_path in files.values():
        with torch.no_grad(), Image.open(image_path) as image:
            features = visual(preprocess(image).unsqueeze(0)).numpy()
        x = features / np.linalg.norm(features, 2, axis=-1, keepdims=True)
        for index in (0, 2, 4, 6, 7):  # linear layers, no activations, dropout off
            x = x @ state[f"layers.{index}.weight"].numpy().T + state[f"layers.{index}.bias"].numpy()
        assert abs(ours(reward, image_path) - float(x[0, 0])) < 1e-3 * max(1.0, abs(float(x[0, 0])))


def test_image_reward_on_its_own_transform(models, files, one_thread):
    """ImageReward.score's steps after image-reward 1.5's _transform(224), on the same networks."""
    reward = load_reward("imagereward", models["imagereward"])
    preprocess = image_reward_transform(224)
    tokens = reward.tokenizer([PROMPT], padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH,
                              return_tensors="pt")
    for path in files.values():
        with torch.no_grad(), Image.open(path) as image:
            image_embeds = reward.vision(pixel_values=preprocess(image).unsqueeze(0)).last_hidden_state
            states = reward.text(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                 encoder_hidden_states=image_embeds,
                                 encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long))
            expected = (float(reward.mlp(states.last_hidden_state[:, 0, :])[0, 0]) - SCORE_MEAN) / SCORE_STD
        assert abs(ours(reward, path) - expected) < 1e-3 * max(1.0, abs(expected)), path.name
