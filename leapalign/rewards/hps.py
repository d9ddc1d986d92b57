"""HPSv2.1: open_clip ViT-H-14 fine-tuned on human preference pairs (``HPS_v2.1_compressed.pt``).

Scoring follows the HPSv2 project: L2-normalized image and text features, score = their dot product
(cosine similarity, no logit scale), the number its paper's table reports (Flux.1-dev about 0.31).
The architecture is built from open_clip's ``ViT-H-14`` config and the file is loaded as a state dict;
open_clip never downloads anything here (no ``pretrained=`` tag).

Preprocessing follows hpsv2 1.2.0 (``hpsv2.img_score.score``): its ``preprocess_val`` is
``image_transform(224, is_train=False, resize_longest_max=True)``, i.e. ``ToTensor``, the longer side to
224 with torchvision's antialiased bicubic on the float tensor, zeros padded to 224x224, normalize; no
crop (``preprocess.longest_side_preprocess``; tests/unit/test_rewards_preprocess.py runs hpsv2's own
transform next to it).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor

from .base import Reward, load_error, require_module
from .files import describe_state_dict, load_into, load_state_dict_file
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, longest_side_preprocess

HPS_ARCHITECTURE = "ViT-H-14"
HPS_EXPECTED = "HPS_v2.1_compressed.pt from the HF repo xswu/HPSv2 (a dict whose 'state_dict' holds an open_clip ViT-H-14)"
_CLIP_KEYS = ("visual.conv1.weight", "token_embedding.weight", "text_projection", "positional_embedding")


class HPSv21Reward(Reward):
    name = "hpsv2.1"
    scale = "cosine similarity of image and text features, about 0.2-0.4 (Flux.1-dev about 0.31)"
    default_lambda = 0.55  # METHOD.md, on this cosine scale

    def __init__(self, model: torch.nn.Module, tokenizer, image_size: int,
                 mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.freeze()

    def pixels(self, images: Tensor) -> Tensor:
        return self.as_model_input(longest_side_preprocess(images, self.image_size, self.mean, self.std))

    def text_features(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(prompts).to(self.weight_device)
        with torch.no_grad():  # the text side never needs a gradient
            return self.model.encode_text(tokens, normalize=True)

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        image_features = self.model.encode_image(self.pixels(images), normalize=True)
        return (image_features * self.text_features(prompts).to(image_features.dtype)).sum(dim=-1).float()


def load_hpsv21(path: str | Path, *, model_config: dict | None = None, architecture: str = HPS_ARCHITECTURE) -> HPSv21Reward:
    """Load ``HPS_v2.1_compressed.pt`` (or the v2.0 file) into an open_clip CLIP built from its config.

    ``model_config`` replaces open_clip's ``architecture`` config (tests pass a tiny one through this
    same path); it has open_clip's schema (``embed_dim``, ``vision_cfg``, ``text_cfg``).
    """
    open_clip = require_module("open_clip", "open_clip_torch", "HPSv2.1")
    state_dict = load_state_dict_file(path, "HPSv2.1", HPS_EXPECTED)
    if not all(k in state_dict for k in _CLIP_KEYS):
        raise load_error("HPSv2.1", path, f"it looks like {describe_state_dict(state_dict)}", HPS_EXPECTED)
    config = copy.deepcopy(model_config) if model_config is not None else open_clip.get_model_config(architecture)
    if config is None:
        raise load_error("HPSv2.1", path, f"open_clip has no model config named {architecture!r}", HPS_EXPECTED)
    model = open_clip.CLIP(**config)
    load_into(model, state_dict, "HPSv2.1", path, HPS_EXPECTED)
    context_length = int(config["text_cfg"].get("context_length", 77))
    tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
    image_size = config["vision_cfg"].get("image_size", 224)
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    return HPSv21Reward(model, tokenizer, image_size)
