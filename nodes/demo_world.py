"""Build the digits world as real ComfyUI objects: a Flux ``ModelPatcher``, a ``comfy.sd.CLIP`` and a ``comfy.sd.VAE``.

The toy-world loader (``nodes/toy_world.py``, shared with the shapes world) with the digits world's
numbers (``leapalign.demo.spec``) and codec (``leapalign.demo.codec``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..leapalign.demo import spec
from ..leapalign.demo.codec import DigitsCodec
from . import toy_world
from .toy_world import DIFFUSION_PREFIX, ROWS_SUFFIX, TEXT_PREFIX, expand_rows, read_metadata, sparse_rows

__all__ = ["DIFFUSION_PREFIX", "ROWS_SUFFIX", "TEXT_PREFIX", "build_clip", "build_flux", "build_vae", "expand_rows",
           "load_world", "read_metadata", "sparse_rows", "split_world_state"]

EMBEDDING_ROWS = {spec.CLIP_L_EMBEDDING_KEY: spec.CLIP_L_CONFIG["vocab_size"],
                  spec.T5_EMBEDDING_KEY: spec.T5_CONFIG["vocab_size"]}


def build_flux(diffusion_state: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32):
    """A Flux ``ModelPatcher`` with the world's config; ``diffusion_state=None`` leaves weights uninitialised."""
    return toy_world.build_flux(spec.FLUX_CONFIG, diffusion_state, dtype)


def _tiny_flux_text_encoder_class():
    return toy_world.tiny_flux_text_encoder_class(spec.CLIP_L_CONFIG, spec.T5_CONFIG)


def build_clip(text_state: dict[str, torch.Tensor] | None = None):
    """A ``comfy.sd.CLIP`` (Flux tokenizers, T5 padded to ``spec.T5_MIN_LENGTH``) holding ``text_state``."""
    return toy_world.build_clip(_tiny_flux_text_encoder_class(), spec.TOKENIZER_DATA, text_state, "digits")


def build_vae():
    """ComfyUI's ``VAE`` around the world's linear codec (16 latent channels, 8x spatial compression)."""
    return toy_world.build_vae(DigitsCodec(), 16, 64)


def split_world_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """A world file's tensors -> (diffusion-model state, full text-encoder state with sparse rows expanded)."""
    return toy_world.split_world_state(state, EMBEDDING_ROWS, "digits")


def load_world(path: str | Path | None = None):
    """(MODEL, CLIP, VAE, metadata) from a world file (default: the shipped one)."""
    path = Path(path) if path is not None else spec.ASSETS_DIR / spec.WORLD_FILE
    diffusion, text = split_world_state(toy_world.read_world_file(path, "digits", "scripts/make_demo_world.py"))
    return build_flux(diffusion), build_clip(text), build_vae(), read_metadata(path)
