"""Tiny models built through ComfyUI's own classes, shared by the integration tests.

ComfyUI constructs models with its ``disable_weight_init`` ops, so a freshly built model holds
uninitialised memory until a state dict is loaded; every builder here initialises from a seeded
generator so fixtures are deterministic.
"""

from __future__ import annotations

import torch

from leapalign.demo.spec import CLIP_L_CONFIG as DEMO_CLIP_L_CONFIG
from leapalign.demo.spec import T5_CONFIG as DEMO_T5_CONFIG

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


def flux_config(config: dict) -> dict:
    """A copy of a Flux unet config with the fields this ComfyUI version requires (0.12+: ``txt_ids_dims``)."""
    from trainer_cli.comfy_runtime import comfy_compat

    config = dict(config)
    config.update(comfy_compat().flux_unet_config_extras(config["axes_dim"]))
    return config


def build_tiny_flux(seed: int = 0, dtype: torch.dtype = torch.float32, config: dict | None = None):
    """A tiny Flux ``ModelPatcher`` (277 k parameters) through ComfyUI's own model classes."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.Flux(flux_config(config or TINY_FLUX_CONFIG))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    # Keys as this ComfyUI names them in memory (0.14+ calls the q/k norm scales ``.weight``).
    model.diffusion_model.load_state_dict(seeded_state_dict(model.diffusion_model, seed, std=0.05))
    model.diffusion_model.to(dtype)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def build_tiny_vae(seed: int = 0, std: float = 0.05):
    """A real ``comfy.sd.VAE`` around a 16-channel KL autoencoder of about 0.4 M parameters."""
    import comfy.ldm.models.autoencoder
    import comfy.sd

    probe = comfy.ldm.models.autoencoder.AutoencoderKL(**TINY_VAE_CONFIG)
    sd = seeded_state_dict(probe, seed, std=std)
    del probe
    return comfy.sd.VAE(sd=sd, config={"params": TINY_VAE_CONFIG})


def flux_conditioning(batch: int = 1, tokens: int = 8, seed: int = 0, guidance: float = 3.5,
                      context_dim: int = 64, pooled_dim: int = 32):
    """ComfyUI CONDITIONING as CLIPTextEncode + FluxGuidance produce it for Flux."""
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, tokens, context_dim, generator=gen)
    pooled = torch.randn(batch, pooled_dim, generator=gen)
    return [[cond, {"pooled_output": pooled, "guidance": guidance}]]


# The tiny text-encoder configs are the demo world's (one definition serves both).
TINY_CLIP_L_CONFIG = DEMO_CLIP_L_CONFIG
TINY_T5_CONFIG = DEMO_T5_CONFIG


def tiny_flux_clip_class():
    """A FluxClipModel whose CLIP-L and T5 halves are tiny (pooled 32, sequence width 64).

    It keeps ComfyUI's real Flux tokenizer and encoders, so stock CLIPTextEncode and FluxGuidance
    produce real Flux conditioning for the tiny Flux fixture.
    """
    import comfy.sd1_clip
    import comfy.text_encoders.flux
    import comfy.text_encoders.t5

    class TinyFluxClipModel(comfy.text_encoders.flux.FluxClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 (ComfyUI's signature)
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(
                device=device, dtype=dtype, textmodel_json_config=dict(TINY_CLIP_L_CONFIG),
                return_projected_pooled=False, model_options={**model_options, "model_name": "clip_l"})
            self.t5xxl = comfy.sd1_clip.SDClipModel(
                device=device, dtype=dtype, textmodel_json_config=dict(TINY_T5_CONFIG),
                special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                model_options={**model_options, "model_name": "t5xxl"})
            self.dtypes = {dtype}

    return TinyFluxClipModel


def build_tiny_clip(seed: int = 0):
    """A real ``comfy.sd.CLIP`` (Flux tokenizer, tiny encoders) with seeded weights."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux

    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer, tiny_flux_clip_class())
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})
    model = clip.cond_stage_model
    model.load_state_dict(seeded_state_dict(model, seed, std=0.05), strict=False)
    return clip
