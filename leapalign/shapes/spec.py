"""The shapes world's fixed numbers: picture geometry, vocabulary, model and encoder sizes, file names.

One place for every number the world-building script, the loader node, the judge and the tests share.
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets" / "shapes"
WORLD_FILE = "shapes_world.safetensors"
REWARD_FILE = "shapes_reward.safetensors"
CHECKSUM_FILE = "regeneration_sha256.json"

# Pictures are 32x32 RGB: a 4x4 grid of 8x8 cells, at most one object (6x6, 1-pixel margin) per cell.
IMAGE_SIZE = 32
GRID = 4
CELL = 8
OBJECT = 6
SHAPES = ("square", "circle", "triangle")
COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}
COLOUR_NAMES = tuple(COLOURS)
MAX_OBJECTS = 4
LATENT_CHANNELS = 16
USED_CHANNELS = len(SHAPES) * 3   # channel (shape, rgb): that shape's amplitude in one colour channel
# Channels 9-15 summarise a cell (its colour, its occupancy) at this gain in model space: the coarse part
# of the picture carries more energy than the detail, as low frequencies do in real pictures' latents.
SUMMARY_GAIN = 3.0

# ComfyUI Flux at toy width (patch 1: one image token per cell, 16 tokens).
FLUX_CONFIG = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 1,
    "vec_in_dim": 32,
    "context_in_dim": 64,
    "hidden_size": 64,
    "mlp_ratio": 4.0,
    "num_heads": 2,
    "depth": 2,
    "depth_single_blocks": 2,
    "axes_dim": [8, 12, 12],
    "theta": 10000,
    "qkv_bias": True,
    "guidance_embed": False,
}

# The longest prompt ("a photo of a yellow triangle and a green square") is 14 T5 tokens with its end
# token; every prompt is padded to 16 so a batch of prompts encodes to one tensor.
T5_MIN_LENGTH = 16
TOKENIZER_DATA = {"t5xxl_min_length": T5_MIN_LENGTH}

# How the world samples: Euler on Flux's schedule shifted for 32x32 (ModelSamplingFlux), 10 steps.
SAMPLING_STEPS = 10
