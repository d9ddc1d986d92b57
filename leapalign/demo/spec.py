"""The digits world's fixed architecture: model, prompt-encoder and sampling settings, and file names.

One place for every number the world-building script, the loader node and the tests must agree on.
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"
WORLD_FILE = "digits_world.safetensors"
REWARD_FILE = "digits_reward.safetensors"
JUDGE_FILE = "digits_judge.safetensors"
CHECKSUM_FILE = "regeneration_sha256.json"

# ComfyUI Flux (BFL layout) at toy width. Patch size 1 (Flux.1 uses 2): a 2x2x16 latent is 4 image
# tokens of 16 values, so the toy width (64) exceeds what a token carries; with patch 2 one token of
# 64 values would have to squeeze through a 64-wide model, and samples came out grainy.
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
    "depth_single_blocks": 1,
    "axes_dim": [8, 12, 12],
    "theta": 10000,
    "qkv_bias": True,
    "guidance_embed": False,
}

CLIP_L_CONFIG = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 49407,
    "hidden_act": "quick_gelu",
    "hidden_size": 32,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 2,
    "num_hidden_layers": 1,
    "pad_token_id": 1,
    "projection_dim": 32,
    "vocab_size": 49408,
}

T5_CONFIG = {
    "d_ff": 128,
    "d_kv": 32,
    "d_model": 64,
    "dense_act_fn": "gelu_pytorch_tanh",
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "num_heads": 2,
    "num_layers": 1,
    "relative_attention_num_buckets": 32,
    "vocab_size": 32128,
}

# Flux's T5 tokenizer pads every prompt to 256 tokens; the world's prompts are 5 tokens long, and
# 256 text tokens would make each model call about 5x slower. ComfyUI reads this length from the
# CLIP's tokenizer data ("t5xxl_min_length"), so stock CLIPTextEncode pads to 8 instead.
T5_MIN_LENGTH = 8
TOKENIZER_DATA = {"t5xxl_min_length": T5_MIN_LENGTH}

# Embedding tables are stored only for the rows the world's prompts use (the rest load as zeros):
# the full tables (49408x32 and 32128x64) would be 14 MB of random numbers nobody reads.
CLIP_L_EMBEDDING_KEY = "clip_l.transformer.text_model.embeddings.token_embedding.weight"
T5_EMBEDDING_KEY = "t5xxl.transformer.shared.weight"

# How the demo samples: ComfyUI's Euler with the model's own (Flux, shift 1.15) "simple" schedule.
IMAGE_SIZE = 16
SAMPLING_STEPS = 8
