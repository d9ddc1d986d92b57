"""ImageReward: BLIP (ViT-L/16 image tower + BERT text encoder with cross-attention) and an MLP head.

The ``image-reward`` package cannot be used: it fetches the ``bert-base-uncased`` tokenizer from the
hub at construction time and imports transformers internals removed in transformers 5. This module
rebuilds the same network from transformers' BLIP parts (``BlipVisionModel``, ``BlipTextModel``: the
same computation as BLIP's ViT and ``med.py`` BERT) and loads the released ``ImageReward.pt`` into it
by renaming keys; only the vision tower's names differ (timm style in the file).

Score (as ``ImageReward.score``): the text ``[CLS]`` state after cross-attending to the image tokens,
through the linear MLP head, then standardized with the release's mean/std.

Preprocessing follows image-reward 1.5 (``ImageReward.ImageReward._transform(224)``, a copy of OpenAI
``clip``'s): torchvision ``Resize(224, BICUBIC)`` and ``CenterCrop(224)`` on the PIL image (offset
rounded), ``ToTensor``, CLIP's normalization.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from .aesthetic import aesthetic_mlp
from .base import Reward, load_error
from .files import describe_state_dict, load_into, load_state_dict_file, read_json, require_folder
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess

REWARD = "ImageReward"
IMAGEREWARD_EXPECTED = ("a folder with ImageReward.pt and med_config.json from the HF repo THUDM/ImageReward, "
                        "and the bert-base-uncased tokenizer's vocab.txt (in the folder or a bert-base-uncased/ subfolder)")
CHECKPOINT_NAME = "ImageReward.pt"
MED_CONFIG_NAME = "med_config.json"
# Standardization constants of the released model (ImageReward.py).
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072
TEXT_MAX_LENGTH = 35
HEAD_LAYERS = (0, 2, 4, 6, 7)
BLIP_HEAD_WIDTH = 64  # BLIP's ViT-B/16 and ViT-L/16 both use 64-wide attention heads

_VISION_RENAMES = (
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
)


def rename_vision_key(key: str) -> str:
    for pattern, replacement in _VISION_RENAMES:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return key


def split_checkpoint(state_dict: dict[str, Tensor]) -> tuple[dict, dict, dict]:
    """(vision tower in transformers names, text encoder, MLP head); projection heads are dropped."""
    vision, text, head = {}, {}, {}
    for key, value in state_dict.items():
        if key.startswith("blip.visual_encoder."):
            vision[rename_vision_key(key[len("blip.visual_encoder."):])] = value
        elif key.startswith("blip.text_encoder.") and not key.endswith("position_ids"):
            text[key[len("blip.text_encoder."):]] = value
        elif key.startswith("mlp.layers."):
            head[key[len("mlp.layers."):]] = value
    return vision, text, head


def vision_config(vision: dict[str, Tensor], heads: int | None):
    from transformers import BlipVisionConfig

    width = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    grid = math.isqrt(vision["embeddings.position_embedding"].shape[1] - 1)
    depth = 1 + max(int(k.split(".")[2]) for k in vision if k.startswith("encoder.layers."))
    return BlipVisionConfig(
        hidden_size=width, intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth, num_attention_heads=heads or width // BLIP_HEAD_WIDTH,
        image_size=grid * patch, patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-6,
    )


def text_config(med: dict, encoder_width: int):
    from transformers import BlipTextConfig

    return BlipTextConfig(
        vocab_size=med["vocab_size"], hidden_size=med["hidden_size"], encoder_hidden_size=encoder_width,
        intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"], max_position_embeddings=med["max_position_embeddings"],
        hidden_act=med.get("hidden_act", "gelu"), layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        pad_token_id=med.get("pad_token_id", 0), bos_token_id=med["vocab_size"] - 2,  # BLIP's added [DEC]
        sep_token_id=None,  # unused by the encoder; the default (102) need not exist in a small vocabulary
    )


def reward_head(input_size: int) -> nn.Sequential:
    """ImageReward's MLP: the same layer stack as the LAION aesthetic predictor (linear layers with
    dropouts between them and no activations), so one definition serves both."""
    return aesthetic_mlp(input_size)


class ImageRewardModel(Reward):
    name = "imagereward"
    scale = "standardized preference score, about -2..2 (Flux.1-dev about 1.05)"
    default_lambda = 2.0  # our choice: above typical scores, so the hinge rarely switches off

    def __init__(self, vision, text, head: nn.Sequential, tokenizer, image_size: int):
        super().__init__()
        self.vision = vision
        self.text = text
        self.mlp = head
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.freeze()

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        pixels = self.as_model_input(clip_preprocess(images, self.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                                                     crop_offset="round"))
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH,
                                return_tensors="pt").to(self.weight_device)
        image_mask = torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=image_tokens.device)
        states = self.text(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                           encoder_hidden_states=image_tokens, encoder_attention_mask=image_mask).last_hidden_state
        raw = self.mlp(states[:, 0, :]).squeeze(-1).float()
        return (raw - SCORE_MEAN) / SCORE_STD


def find_vocab(folder: Path) -> Path:
    for candidate in (folder, folder / "bert-base-uncased"):
        if (candidate / "vocab.txt").is_file():
            return candidate
    raise load_error(REWARD, folder, "no vocab.txt of the bert-base-uncased tokenizer", IMAGEREWARD_EXPECTED)


def load_tokenizer(folder: Path):
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(find_vocab(folder)), local_files_only=True)
    # BLIP adds these two tokens (ids 30522, 30523); they only matter if a prompt spells them out.
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_tokens(["[ENC]"], special_tokens=True)
    return tokenizer


def load_image_reward(path: str | Path, *, vision_heads: int | None = None) -> ImageRewardModel:
    """``path``: ``ImageReward.pt`` or its folder (with ``med_config.json`` and the tokenizer's ``vocab.txt``).

    ``vision_heads`` overrides the head count derived from the width (tests use tiny towers).
    """
    from transformers import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    path = Path(path)
    folder = require_folder(path, REWARD, IMAGEREWARD_EXPECTED)
    checkpoint = path if path.is_file() else folder / CHECKPOINT_NAME
    state_dict = load_state_dict_file(checkpoint, REWARD, IMAGEREWARD_EXPECTED)
    vision_sd, text_sd, head_sd = split_checkpoint(state_dict)
    if not vision_sd or not text_sd or not head_sd:
        raise load_error(REWARD, checkpoint, f"it looks like {describe_state_dict(state_dict)}", IMAGEREWARD_EXPECTED)
    med = read_json(folder / MED_CONFIG_NAME, REWARD, IMAGEREWARD_EXPECTED)
    try:
        v_config = vision_config(vision_sd, vision_heads)
        t_config = text_config(med, v_config.hidden_size)
        head = reward_head(head_sd["0.weight"].shape[1])
    except (KeyError, ValueError, IndexError) as exc:
        raise load_error(REWARD, checkpoint, f"incomplete checkpoint or med_config ({exc!r})", IMAGEREWARD_EXPECTED) from None
    vision = BlipVisionModel(v_config)
    text = BlipTextModel(t_config, add_pooling_layer=False)
    load_into(vision, vision_sd, REWARD, checkpoint, IMAGEREWARD_EXPECTED)
    load_into(text, text_sd, REWARD, checkpoint, IMAGEREWARD_EXPECTED)
    load_into(head, head_sd, REWARD, checkpoint, IMAGEREWARD_EXPECTED)
    return ImageRewardModel(vision, text, head, load_tokenizer(folder), v_config.image_size)
