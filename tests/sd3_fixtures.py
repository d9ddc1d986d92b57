"""Tiny SD3 / SD3.5 models built through ComfyUI's own classes (``supported_models.SD3`` -> ``model_base.SD3``).

The MMDiT fixes head size 64 and heads = depth, so depth 2 gives width 128. Two variants cover both
SD3.5 architectures: ``medium`` (MMDiT-X: a second image self-attention ``x_block.attn2`` in block 0,
RMS q/k norms) and ``large`` (RMS q/k norms, no ``attn2``). The text side is ComfyUI's SD3 text
encoder class with a tiny CLIP-L only (no CLIP-G, no T5), which ComfyUI pads to a [B, 77, 4096]
sequence and a 768 + 1280 pooled vector with zeros where the missing encoders would be.
"""

from __future__ import annotations

import torch
from comfy_fixtures import TINY_CLIP_L_CONFIG, seeded_state_dict

CONTEXT_DIM = 4096   # what ComfyUI's SD3 text encoder emits whatever encoders are present
POOLED_DIM = 32 + 1280  # tiny CLIP-L pooled width + zeros for the missing CLIP-G

_BASE = {
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "depth": 2,
    "input_size": None,
    "adm_in_channels": POOLED_DIM,
    "context_embedder_config": {"target": "torch.nn.Linear",
                                "params": {"in_features": CONTEXT_DIM, "out_features": 128}},
    "num_patches": 256,
    "pos_embed_max_size": 16,
    "pos_embed_scaling_factor": None,
    "qk_norm": "rms",
}
TINY_SD3_CONFIGS = {
    "medium": {**_BASE, "x_block_self_attn_layers": [0]},
    "large": {**_BASE, "x_block_self_attn_layers": []},
}


def build_tiny_sd3(variant: str = "medium", seed: int = 0, dtype: torch.dtype = torch.float32, shift: float | None = None):
    """A tiny SD3 ``ModelPatcher`` (about 0.9 M parameters) through ComfyUI's SD3 model classes."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.SD3(dict(TINY_SD3_CONFIGS[variant]))
    if shift is not None:
        model_config.sampling_settings = {**model_config.sampling_settings, "shift": shift}
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    model.diffusion_model.load_state_dict(seeded_state_dict(model.diffusion_model, seed, std=0.05))
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def sd3_conditioning(batch: int = 1, tokens: int = 8, seed: int = 0):
    """CONDITIONING as CLIPTextEncode produces it for SD3 (sequence + pooled output, no guidance)."""
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, tokens, CONTEXT_DIM, generator=gen)
    pooled = torch.randn(batch, POOLED_DIM, generator=gen)
    return [[cond, {"pooled_output": pooled}]]


def tiny_sd3_clip_class():
    """ComfyUI's SD3 text encoder with only a tiny CLIP-L (three layers: SD3 reads the penultimate)."""
    import comfy.sd1_clip
    import comfy.text_encoders.sd3_clip

    config = {**TINY_CLIP_L_CONFIG, "num_hidden_layers": 3}

    class TinySD3ClipModel(comfy.text_encoders.sd3_clip.SD3ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 (ComfyUI's signature)
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                textmodel_json_config=config, return_projected_pooled=False,
                model_options={**model_options, "model_name": "clip_l"})
            self.clip_g = None
            self.t5xxl = None
            self.dtypes = {dtype}

    return TinySD3ClipModel


def build_tiny_sd3_clip(seed: int = 0):
    """A real ``comfy.sd.CLIP`` (SD3 tokenizer, tiny CLIP-L) with seeded weights."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.sd3_clip

    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.sd3_clip.SD3Tokenizer, tiny_sd3_clip_class())
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})
    model = clip.cond_stage_model
    model.load_state_dict(seeded_state_dict(model, seed, std=0.05), strict=False)
    return clip
