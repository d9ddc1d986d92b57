"""LAION aesthetic predictor v2: an MLP on L2-normalized CLIP ViT-L/14 image embeddings.

The released file ``sac+logos+ava1-l14-linearMSE.pth`` is a state dict of five linear layers
(``layers.0``, ``layers.2``, ``layers.4``, ``layers.6``, ``layers.7``; dropouts between them, no
activations). The CLIP image tower comes from a transformers ``openai/clip-vit-large-patch14`` folder.
The prompt is ignored: aesthetics are judged from the image alone.

Preprocessing follows the predictor's reference script (``simple_inference.py``), which takes
``clip.load("ViT-L/14")``'s preprocess: OpenAI ``clip``'s ``_transform(224)`` (as on PyPI in
clip-anytorch 2.6.0): torchvision ``Resize(224, BICUBIC)`` and ``CenterCrop(224)`` on the PIL image
(offset rounded), ``ToTensor``, CLIP's normalization; the CLIP folder's ``preprocessor_config.json`` is
not used. The embedding is L2-normalized before the MLP, as the script does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .base import Reward, load_error
from .clip_hf import CLIP_EXPECTED, ImageSettings, load_clip_folder
from .files import load_into, load_state_dict_file, require_keys
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess

AESTHETIC_EXPECTED = ("sac+logos+ava1-l14-linearMSE.pth from christophschuhmann/improved-aesthetic-predictor "
                      "(MLP state dict layers.0/2/4/6/7), with a CLIP ViT-L/14 transformers folder "
                      "'clip-vit-large-patch14' next to it")
AESTHETIC_LAYERS = (0, 2, 4, 6, 7)
CLIP_FOLDER_NAME = "clip-vit-large-patch14"


def aesthetic_mlp(input_size: int) -> nn.Sequential:
    """The released predictor's layout (module indices match the state dict keys)."""
    return nn.Sequential(
        nn.Linear(input_size, 1024), nn.Dropout(0.2),
        nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


class AestheticReward(Reward):
    name = "aesthetic"
    scale = "predicted AVA rating, about 1-10 (typical images 4-7)"
    default_lambda = 8.0  # our choice: above what most images reach, so the hinge rarely switches off

    def __init__(self, clip_model, settings: ImageSettings, mlp: nn.Sequential):
        super().__init__()
        self.clip = clip_model
        self.settings = settings
        self.layers = mlp
        self.freeze()

    def image_embedding(self, images: Tensor) -> Tensor:
        s = self.settings
        pixels = self.as_model_input(clip_preprocess(images, s.resize, s.mean, s.std, crop_size=s.crop,
                                                     crop_offset="round"))
        pooled = self.clip.vision_model(pixel_values=pixels).pooler_output
        return torch.nn.functional.normalize(self.clip.visual_projection(pooled), dim=-1)

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.layers(self.image_embedding(images)).squeeze(-1).float()


def load_aesthetic(path: str | Path, *, clip_folder: str | Path | None = None) -> AestheticReward:
    """``path``: the MLP ``.pth``; ``clip_folder``: CLIP ViT-L/14 (default: ``clip-vit-large-patch14`` beside it)."""
    reward = "LAION aesthetic"
    state_dict = load_state_dict_file(path, reward, AESTHETIC_EXPECTED)
    keys = [f"layers.{i}.{p}" for i in AESTHETIC_LAYERS for p in ("weight", "bias")]
    require_keys(state_dict, keys, reward, path, AESTHETIC_EXPECTED)
    clip_folder = Path(clip_folder) if clip_folder is not None else Path(path).parent / CLIP_FOLDER_NAME
    clip_model, _tokenizer, _settings = load_clip_folder(clip_folder, reward, CLIP_EXPECTED, need_tokenizer=False)
    resolution = int(clip_model.config.vision_config.image_size)  # clip's _transform(input_resolution)
    settings = ImageSettings(resolution, resolution, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    input_size = state_dict["layers.0.weight"].shape[1]
    if input_size != clip_model.config.projection_dim:
        raise load_error(reward, path, f"the MLP takes {input_size}-d features but the CLIP at {clip_folder} "
                         f"gives {clip_model.config.projection_dim}-d ones", AESTHETIC_EXPECTED)
    mlp = aesthetic_mlp(input_size)
    load_into(mlp, {k[len('layers.'):]: v for k, v in state_dict.items()}, reward, path, AESTHETIC_EXPECTED)
    return AestheticReward(clip_model, settings, mlp)
