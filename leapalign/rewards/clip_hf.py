"""Rewards on a transformers ``CLIPModel`` folder: PickScore and plain CLIP score.

Both load with ``local_files_only=True`` from a folder the user downloaded (``config.json`` plus
weights, and the processor files: tokenizer and ``preprocessor_config.json``). The image processor
settings are read from ``preprocessor_config.json`` and applied in torch (see ``preprocess.py``).

Preprocessing follows transformers' ``CLIPImageProcessor``, the processor of the PickScore model
card's code and of torchmetrics' CLIP score: shorter side to ``shortest_edge`` with PIL's 8-bit
bicubic, centre crop with the offset floored, normalize. That is its PIL backend (the default in
transformers 4.x, ``CLIPImageProcessorPil`` in 5.x); 5.x's default torchvision backend gives the same
8-bit results to a step. Both are checked against transformers 5.24 in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .base import Reward, load_error
from .files import read_json, require_folder
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess

TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
PICKSCORE_EXPECTED = ("the PickScore_v1 folder (HF repo yuvalkirstain/PickScore_v1: config.json + model.safetensors), "
                      "with the processor files of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (tokenizer.json or "
                      "vocab.json + merges.txt, preprocessor_config.json) in it")
CLIP_EXPECTED = ("a transformers CLIP folder (config.json with model_type 'clip', model.safetensors or "
                 "pytorch_model.bin, tokenizer files, preprocessor_config.json), e.g. openai/clip-vit-large-patch14")


@dataclass(frozen=True)
class ImageSettings:
    """The parts of a CLIP image processor config that matter for a differentiable reimplementation."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def read_image_settings(folder: Path, image_size: int, reward: str, expected: str) -> ImageSettings:
    """``preprocessor_config.json`` settings; CLIP's standard ones at the model's size if the file is absent."""
    path = folder / "preprocessor_config.json"
    if not path.exists():
        return ImageSettings(image_size, image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    cfg = read_json(path, reward, expected)
    size = cfg.get("size", image_size)
    resize = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
    crop = cfg.get("crop_size", resize)
    crop = crop.get("height") if isinstance(crop, dict) else crop
    if not cfg.get("do_center_crop", True):
        crop = resize
    if cfg.get("resample", 3) != 3:
        raise load_error(reward, path, f"resample={cfg.get('resample')} is not bicubic (3)", expected)
    return ImageSettings(int(resize), int(crop), tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
                         tuple(cfg.get("image_std", OPENAI_CLIP_STD)))


def load_clip_folder(folder: str | Path, reward: str, expected: str, processor_folder: str | Path | None = None,
                     *, need_tokenizer: bool = True):
    """(CLIPModel, tokenizer or None, ImageSettings) from local files only; never contacts a hub."""
    from transformers import AutoTokenizer, CLIPModel

    folder = require_folder(folder, reward, expected)
    config = read_json(folder / "config.json", reward, expected)
    if config.get("model_type") != "clip":
        raise load_error(reward, folder, f"config.json has model_type {config.get('model_type')!r}, not 'clip'", expected)
    processor_folder = require_folder(processor_folder, reward, expected) if processor_folder else folder
    has_tokenizer = any((processor_folder / name).exists() for name in TOKENIZER_FILES)
    if need_tokenizer and not has_tokenizer:
        raise load_error(reward, processor_folder, f"no tokenizer files ({' or '.join(TOKENIZER_FILES)})", expected)
    try:
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # safetensors / torch / transformers each raise their own types
        problem = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise load_error(reward, folder, f"transformers could not load the weights ({problem})", expected) from None
    tokenizer = AutoTokenizer.from_pretrained(str(processor_folder), local_files_only=True) if need_tokenizer else None
    settings = read_image_settings(processor_folder, model.config.vision_config.image_size, reward, expected)
    return model, tokenizer, settings


class TransformersClipReward(Reward):
    """Image/text cosine similarity of a transformers CLIP, times a fixed or learned factor."""

    def __init__(self, model, tokenizer, settings: ImageSettings):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.freeze()

    def pixels(self, images: Tensor) -> Tensor:
        s = self.settings
        return self.as_model_input(clip_preprocess(images, s.resize, s.mean, s.std, crop_size=s.crop, crop_offset="floor"))

    def image_features(self, images: Tensor) -> Tensor:
        pooled = self.model.vision_model(pixel_values=self.pixels(images)).pooler_output
        return torch.nn.functional.normalize(self.model.visual_projection(pooled), dim=-1)

    def text_features(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        tokens = {k: v.to(self.weight_device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():  # the text side never needs a gradient
            pooled = self.model.text_model(**tokens).pooler_output
            return torch.nn.functional.normalize(self.model.text_projection(pooled), dim=-1)

    def cosine(self, images: Tensor, prompts: list[str]) -> Tensor:
        image_features = self.image_features(images)
        return (image_features * self.text_features(prompts).to(image_features.dtype)).sum(dim=-1).float()


class PickScoreReward(TransformersClipReward):
    """PickScore_v1: ``exp(logit_scale) * cosine``, as the PickScore project reports (Flux.1-dev about 22.8)."""

    name = "pickscore"

    def __init__(self, model, tokenizer, settings: ImageSettings):
        super().__init__(model, tokenizer, settings)
        self.logit_scale = float(model.logit_scale.detach().float().exp())
        self.scale = (f"{self.logit_scale:g} x cosine similarity (PickScore's logit scale), "
                      f"about 18-24 for the released model (Flux.1-dev about 22.8)")
        # METHOD.md's 0.4 only makes sense as a cosine (the logit-scale scores are all far above 0.4),
        # so the threshold is 0.4 cosine expressed on the reported scale: 40 for the released model.
        self.default_lambda = 0.4 * self.logit_scale

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.logit_scale * self.cosine(images, prompts)


class ClipScoreReward(TransformersClipReward):
    """CLIP score as torchmetrics reports it, ``100 * cosine``, without the clamp at 0 (it would kill gradients)."""

    name = "clip_score"
    scale = "100 x cosine similarity, about 15-35 for CLIP ViT-L/14"
    default_lambda = 40.0  # 0.4 cosine, the same threshold as PickScore's; above what CLIP scores reach

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return 100.0 * self.cosine(images, prompts)


def load_pickscore(folder: str | Path, *, processor_folder: str | Path | None = None) -> PickScoreReward:
    return PickScoreReward(*load_clip_folder(folder, "PickScore", PICKSCORE_EXPECTED, processor_folder))


def load_clip_score(folder: str | Path, *, processor_folder: str | Path | None = None) -> ClipScoreReward:
    return ClipScoreReward(*load_clip_folder(folder, "CLIP score", CLIP_EXPECTED, processor_folder))
