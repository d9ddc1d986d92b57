"""Tiny Qwen-Image, Z-Image and Lumina 2 models built through ComfyUI's own ``supported_models`` classes.

ComfyUI's key-based detection (``model_detection``) reads only a few sizes from a Qwen-Image or
Lumina 2 file (layer count, input channels, width) and fills in the real models' head counts and
RoPE axes, so a tiny model cannot be detected from its keys; the fixtures build each model from its
``supported_models`` class with a tiny ``unet_config`` (what the loaders do after detection).

* Qwen-Image (``supported_models.QwenImage`` -> ``model_base.QwenImage``): width 64 (2 heads of 32),
  one dual-stream block, a 64-wide text sequence (the tiny Flux text encoder of tests/comfy_fixtures.py conditions all three); Wan 2.1 latents ``[B, 16, 1, h, w]``.
* Z-Image (``supported_models.ZImage`` -> ``model_base.Lumina2``): Z-Image's layout (tanh-gated
  ``z_image_modulation``, pad tokens) at width 256, the smallest its 256-wide timestep embedding
  allows; one main, one noise-refiner and one context-refiner block. ``multiple_of`` 2 keeps the
  feed-forward width ``int(8/3 * dim)`` that diffusers' ``ZImageTransformer2DModel`` uses.
* Lumina 2 (``supported_models.Lumina2`` -> ``model_base.Lumina2``): the original NextDiT layout
  (SiLU modulation, grouped-query attention) at width 64.
* HiDream-I1 (``supported_models.HiDream`` -> ``model_base.HiDream``): width 64, one dual-stream and one
  single-stream block, each with a shared and 4 routed experts (2 active), reading Llama layers 0 and
  31 at the real text widths, so ComfyUI's own HiDream text encoder with a tiny CLIP-L only
  (:func:`build_tiny_hidream_clip`) conditions it.
"""

from __future__ import annotations

import torch
from comfy_fixtures import seeded_state_dict

QWEN_CONTEXT_DIM = 64  # the tiny Flux text encoder's T5 width (tests/comfy_fixtures.py)
TINY_QWEN_IMAGE_CONFIG = {
    "image_model": "qwen_image",
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 1,
    "attention_head_dim": 32,
    "num_attention_heads": 2,
    "joint_attention_dim": QWEN_CONTEXT_DIM,
    "axes_dims_rope": (8, 12, 12),
}

LUMINA_CONTEXT_DIM = 64
TINY_ZIMAGE_CONFIG = {
    "image_model": "lumina2",
    "patch_size": 2,
    "in_channels": 16,
    "dim": 256,
    "cap_feat_dim": LUMINA_CONTEXT_DIM,
    "n_layers": 1,
    "n_refiner_layers": 1,
    "qk_norm": True,
    "n_heads": 2,
    "n_kv_heads": 2,
    "multiple_of": 2,
    "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512],
    "rope_theta": 256.0,
    "ffn_dim_multiplier": 8.0 / 3.0,
    "z_image_modulation": True,
    "time_scale": 1000.0,
    "pad_tokens_multiple": 32,
}
TINY_LUMINA2_CONFIG = {
    "image_model": "lumina2",
    "patch_size": 2,
    "in_channels": 16,
    "dim": 64,
    "cap_feat_dim": LUMINA_CONTEXT_DIM,
    "n_layers": 1,
    "n_refiner_layers": 1,
    "qk_norm": True,
    "n_heads": 4,
    "n_kv_heads": 2,
    "multiple_of": 16,
    "axes_dims": [4, 6, 6],
    "axes_lens": [300, 512, 512],
    "rope_theta": 10000.0,
    "ffn_dim_multiplier": 4.0,
}

# What ComfyUI's HiDream text encoder emits whatever encoders are present (missing ones give zeros):
# T5 [B, 128, 4096], Llama-3.1 [B, 32 layers, T, 4096], pooled CLIP-L + CLIP-G (tiny CLIP-L: 32 + 1280).
HIDREAM_T5_DIM, HIDREAM_LLAMA_DIM, HIDREAM_LLAMA_LAYERS, HIDREAM_POOLED_DIM = 4096, 4096, 32, 32 + 1280
TINY_HIDREAM_CONFIG = {
    "image_model": "hidream",
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 32,
    "num_attention_heads": 2,
    "caption_channels": [HIDREAM_T5_DIM, HIDREAM_LLAMA_DIM],
    "text_emb_dim": HIDREAM_POOLED_DIM,
    "num_routed_experts": 4,
    "num_activated_experts": 2,
    "axes_dims_rope": [16, 8, 8],
    "max_resolution": [128, 128],
    "llama_layers": [0, HIDREAM_LLAMA_LAYERS - 1],
}

MODELS = {
    # name: (supported_models class, unet_config, text width)
    "qwen_image": ("QwenImage", TINY_QWEN_IMAGE_CONFIG, QWEN_CONTEXT_DIM),
    "z_image": ("ZImage", TINY_ZIMAGE_CONFIG, LUMINA_CONTEXT_DIM),
    "lumina2": ("Lumina2", TINY_LUMINA2_CONFIG, LUMINA_CONTEXT_DIM),
    "hidream": ("HiDream", TINY_HIDREAM_CONFIG, HIDREAM_T5_DIM),
}


def build_tiny_dit(name: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A tiny ``ModelPatcher`` of ``name`` (a key of :data:`MODELS`) through ComfyUI's model classes."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    class_name, config, _ = MODELS[name]
    model_config = getattr(comfy.supported_models, class_name)(dict(config))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    model.diffusion_model.load_state_dict(seeded_state_dict(model.diffusion_model, seed, std=0.05))
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def dit_conditioning(name: str, batch: int = 1, tokens: int = 8, seed: int = 0, dtype=torch.float32):
    """CONDITIONING as the family's text encoder node gives it: a token sequence, no pooled output.

    (Qwen-Image's and Z-Image's encoders may add an ``attention_mask``; an all-ones mask is dropped
    by the model anyway, so a full-length sequence stands for any prompt.)
    """
    gen = torch.Generator().manual_seed(seed)
    sequence = torch.randn(batch, tokens, MODELS[name][2], generator=gen).to(dtype)
    if name != "hidream":
        return [[sequence, {}]]
    # HiDream: + CLIP-L/G pooled output and Llama-3.1 hidden states of every layer [B, layers, T, D]
    pooled = torch.randn(batch, HIDREAM_POOLED_DIM, generator=gen).to(dtype)
    llama = torch.randn(batch, HIDREAM_LLAMA_LAYERS, tokens, HIDREAM_LLAMA_DIM, generator=gen).to(dtype)
    return [[sequence, {"pooled_output": pooled, "conditioning_llama3": llama}]]


def build_tiny_hidream_clip(seed: int = 0):
    """A real ``comfy.sd.CLIP``: ComfyUI's HiDream tokenizer and text encoder with a tiny CLIP-L only
    (ComfyUI fills in zeros for the missing CLIP-G, T5 and Llama outputs, ``conditioning_llama3`` included)."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base
    import comfy.text_encoders.hidream
    from comfy_fixtures import TINY_CLIP_L_CONFIG

    class TinyHiDreamTEModel(comfy.text_encoders.hidream.HiDreamTEModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 (ComfyUI's signature)
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(
                device=device, dtype=dtype, textmodel_json_config=dict(TINY_CLIP_L_CONFIG),
                return_projected_pooled=False, model_options={**model_options, "model_name": "clip_l"})
            self.clip_g = self.t5xxl = self.llama = None
            self.dtypes = {dtype}

    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.hidream.HiDreamTokenizer, TinyHiDreamTEModel)
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})
    model = clip.cond_stage_model
    model.load_state_dict(seeded_state_dict(model, seed, std=0.05), strict=False)
    return clip
