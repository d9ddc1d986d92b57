"""Tiny Flux.2 and Chroma models built through ComfyUI's own classes, shared by their tests.

Both are built from a config through ``comfy.supported_models.Flux2`` / ``.Chroma`` (``get_model`` ->
``model_base.Flux2`` / ``.Chroma``), as the Flux.1 fixture is: ComfyUI's key-based detection cannot
produce them on every supported version (0.3.75 fixes Flux.2 at 48 heads, i.e. width 6144; every
version fixes Chroma's approximator at width 3072). On ComfyUI versions whose detection infers Flux.2's
heads from its width, ``tests/integration/test_flux2.py`` also loads the tiny Flux.2 state dict through
the stock loader path and checks it builds the same model.

* Flux.2: width 128 (one head of 128 = 4 RoPE axes of 32, what detection assumes), one double and one
  single block, global modulation, gated SiLU MLPs, no biases, guidance embedding; 128 latent channels,
  patch 1; text width 64. About 0.6 M parameters.
* Chroma: width 64, two heads, one double and one single block, approximator width 32 with one layer;
  16 latent channels, patch 2; text width 64. About 0.2 M parameters.
"""

from __future__ import annotations

import torch
from comfy_fixtures import seeded_state_dict

TINY_FLUX2_CONFIG = {
    "image_model": "flux2",
    "in_channels": 128,
    "out_channels": 128,
    "vec_in_dim": None,
    "context_in_dim": 64,
    "hidden_size": 128,
    "mlp_ratio": 3.0,
    "num_heads": 1,
    "depth": 1,
    "depth_single_blocks": 1,
    "axes_dim": [32, 32, 32, 32],
    "theta": 2000,
    "patch_size": 1,
    "qkv_bias": False,
    "guidance_embed": True,
    "global_modulation": True,
    "mlp_silu_act": True,
    "ops_bias": False,
    "default_ref_method": "index",
    "ref_index_scale": 10.0,
}

TINY_CHROMA_CONFIG = {
    "image_model": "chroma",
    "in_channels": 64,
    "out_channels": 64,
    "context_in_dim": 64,
    "hidden_size": 64,
    "mlp_ratio": 4.0,
    "num_heads": 2,
    "depth": 1,
    "depth_single_blocks": 1,
    "axes_dim": [8, 12, 12],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "in_dim": 64,  # fixed by Chroma's forward: 16 + 16 timestep/guidance features + 32 index features
    "out_dim": 64,  # the model width: one modulation vector per slot
    "hidden_dim": 32,
    "n_layers": 1,
}
TEXT_DIM = 64

TINY_FLUX2_VAE_CONFIG = {
    "embed_dim": 128,
    "ddconfig": {
        "double_z": True, "z_channels": 128, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
    },
}


def flux2_config() -> dict:
    """The tiny Flux.2 config with this ComfyUI's extra ``FluxParams`` fields (Flux.2's text ids on axis 3)."""
    from comfy.ldm.flux.model import FluxParams

    from trainer_cli.comfy_runtime import comfy_compat

    return {**TINY_FLUX2_CONFIG, **comfy_compat().params_extras(FluxParams, {"txt_ids_dims": [3]})}


def chroma_config() -> dict:
    from comfy.ldm.chroma.model import ChromaParams

    from trainer_cli.comfy_runtime import comfy_compat

    return {**TINY_CHROMA_CONFIG,
            **comfy_compat().params_extras(ChromaParams, {"txt_ids_dims": [], "vec_in_dim": None})}


def _patcher(model_config, seed: int, dtype: torch.dtype, std: float = 0.05):
    import comfy.model_management
    import comfy.model_patcher

    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    model.diffusion_model.load_state_dict(seeded_state_dict(model.diffusion_model, seed, std=std))
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def build_tiny_flux2(seed: int = 0, dtype: torch.dtype = torch.float32):
    """A tiny Flux.2 ``ModelPatcher`` through ``supported_models.Flux2`` -> ``model_base.Flux2``."""
    import comfy.supported_models

    return _patcher(comfy.supported_models.Flux2(flux2_config()), seed, dtype)


def build_tiny_chroma(seed: int = 0, dtype: torch.dtype = torch.float32):
    """A tiny Chroma ``ModelPatcher`` through ``supported_models.Chroma`` -> ``model_base.Chroma``."""
    import comfy.supported_models

    return _patcher(comfy.supported_models.Chroma(chroma_config()), seed, dtype)


def flux2_conditioning(batch: int = 1, tokens: int = 8, seed: int = 0, guidance: float = 4.0):
    """CONDITIONING as a Flux.2 text encoder + ``FluxGuidance`` give it (a sequence, no pooled vector)."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, TEXT_DIM, generator=gen), {"pooled_output": None, "guidance": guidance}]]


def chroma_conditioning(batch: int = 1, tokens: int = 8, seed: int = 0):
    """CONDITIONING as ``CLIPTextEncode`` with Chroma's T5 gives it (a sequence only)."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, TEXT_DIM, generator=gen), {"pooled_output": None}]]


def build_tiny_flux2_vae(seed: int = 0, std: float = 0.2):
    """A ``comfy.sd.VAE`` decoding Flux.2's 128-channel, 1/16-size latents (a KL autoencoder, 5 levels)."""
    import comfy.ldm.models.autoencoder
    import comfy.sd

    probe = comfy.ldm.models.autoencoder.AutoencoderKL(**TINY_FLUX2_VAE_CONFIG)
    sd = seeded_state_dict(probe, seed, std=std)
    del probe
    return comfy.sd.VAE(sd=sd, config={"params": TINY_FLUX2_VAE_CONFIG})
