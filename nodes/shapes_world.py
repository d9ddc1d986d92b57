"""Build the shapes world as real ComfyUI objects: a Flux ``ModelPatcher``, a ``comfy.sd.CLIP``, a ``comfy.sd.VAE``.

The toy-world loader (``nodes/toy_world.py``, shared with the digits world) with the shapes world's
numbers (``leapalign.shapes.spec``: ComfyUI's Flux at toy size, every prompt padded to 16 T5 tokens;
the text encoders are the digits world's widths) and codec (``leapalign.shapes.codec``). The MODEL
samples on Flux's schedule shifted for 32x32 pictures (as ``ModelSamplingFlux`` would).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..leapalign.shapes import spec
from ..leapalign.shapes.codec import ShapesCodec
from . import toy_world
from .demo_world import _tiny_flux_text_encoder_class, split_world_state
from .flux_shift import with_resolution_shift
from .toy_world import DIFFUSION_PREFIX, ROWS_SUFFIX, TEXT_PREFIX, read_metadata, sparse_rows

__all__ = ["DIFFUSION_PREFIX", "ROWS_SUFFIX", "TEXT_PREFIX", "build_clip", "build_flux", "build_vae", "load_world",
           "sparse_rows", "split_world_state"]


def build_flux(diffusion_state: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32):
    """A Flux ``ModelPatcher`` with the shapes config; ``diffusion_state=None`` leaves weights uninitialised."""
    return toy_world.build_flux(spec.FLUX_CONFIG, diffusion_state, dtype)


def build_clip(text_state: dict[str, torch.Tensor] | None = None):
    """A ``comfy.sd.CLIP`` (Flux tokenizers, T5 padded to ``spec.T5_MIN_LENGTH``) holding ``text_state``."""
    return toy_world.build_clip(_tiny_flux_text_encoder_class(), spec.TOKENIZER_DATA, text_state, "shapes")


def build_vae():
    """ComfyUI's ``VAE`` around the shapes codec (16 latent channels, 8x spatial compression)."""
    return toy_world.build_vae(ShapesCodec(), spec.LATENT_CHANNELS, 256)


def load_world(path: str | Path | None = None, shift: bool = True):
    """(MODEL, CLIP, VAE, metadata) from a world file (default: the shipped one).

    ``shift`` puts the MODEL on Flux's schedule for the world's picture size (``ModelSamplingFlux``).
    """
    path = Path(path) if path is not None else spec.ASSETS_DIR / spec.WORLD_FILE
    diffusion, text = split_world_state(toy_world.read_world_file(path, "shapes", "scripts/make_shapes_world.py"))
    model = build_flux(diffusion)
    if shift:
        model = with_resolution_shift(model, spec.IMAGE_SIZE, spec.IMAGE_SIZE)
    return model, build_clip(text), build_vae(), read_metadata(path)
