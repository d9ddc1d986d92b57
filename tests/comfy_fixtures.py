"""Tiny models built through ComfyUI's own classes, shared by the integration tests.

ComfyUI constructs models with its ``disable_weight_init`` ops, so a freshly built model holds
uninitialised memory until a state dict is loaded; every builder here initialises from a seeded
generator so fixtures are deterministic.
"""

from __future__ import annotations

import torch

TINY_FLUX_CONFIG = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "vec_in_dim": 32,
    "context_in_dim": 64,
    "hidden_size": 64,
    "mlp_ratio": 4.0,
    "num_heads": 2,
    "depth": 1,
    "depth_single_blocks": 1,
    "axes_dim": [8, 12, 12],
    "theta": 10000,
    "qkv_bias": True,
    "guidance_embed": True,
}

TINY_VAE_CONFIG = {
    "embed_dim": 16,
    "ddconfig": {
        "double_z": True,
        "z_channels": 16,
        "resolution": 32,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 1, 1, 1],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
}


def seeded_state_dict(module: torch.nn.Module, seed: int, std: float = 0.02) -> dict[str, torch.Tensor]:
    """A deterministic random state dict for ``module`` (norm scales 1, biases small)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in module.state_dict().items():
        if name.endswith("scale") or (name.endswith(".weight") and tensor.ndim == 1):
            value = torch.ones(tensor.shape)
        else:
            value = torch.randn(tensor.shape, generator=gen) * std
        out[name] = value.to(tensor.dtype if tensor.is_floating_point() else torch.float32)
    return out


def build_tiny_flux(seed: int = 0, dtype: torch.dtype = torch.float32, config: dict | None = None):
    """A tiny Flux ``ModelPatcher`` (277 k parameters) through ComfyUI's own model classes."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.Flux(dict(config or TINY_FLUX_CONFIG))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    model.diffusion_model.load_state_dict(seeded_state_dict(model.diffusion_model, seed, std=0.05))
    model.diffusion_model.to(dtype)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def build_tiny_vae(seed: int = 0):
    """A real ``comfy.sd.VAE`` around a 16-channel KL autoencoder of about 1 M parameters."""
    import comfy.ldm.models.autoencoder
    import comfy.sd

    probe = comfy.ldm.models.autoencoder.AutoencoderKL(**TINY_VAE_CONFIG)
    sd = seeded_state_dict(probe, seed, std=0.05)
    del probe
    return comfy.sd.VAE(sd=sd, config={"params": TINY_VAE_CONFIG})


def flux_conditioning(batch: int = 1, tokens: int = 8, seed: int = 0, guidance: float = 3.5,
                      context_dim: int = 64, pooled_dim: int = 32):
    """ComfyUI CONDITIONING as CLIPTextEncode + FluxGuidance produce it for Flux."""
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, tokens, context_dim, generator=gen)
    pooled = torch.randn(batch, pooled_dim, generator=gen)
    return [[cond, {"pooled_output": pooled, "guidance": guidance}]]
