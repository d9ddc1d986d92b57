"""Build the shapes world as real ComfyUI objects: a Flux ``ModelPatcher``, a ``comfy.sd.CLIP``, a ``comfy.sd.VAE``.

Built like the digits world (``nodes/demo_world.py``, whose text-encoder and file helpers it reuses):
ComfyUI's own Flux class at toy size (``leapalign.shapes.spec.FLUX_CONFIG``), ComfyUI's Flux
text-encoder pair at toy width with every prompt padded to 16 T5 tokens, and ComfyUI's ``VAE`` class
around the world's fixed linear codec (``leapalign.shapes.codec``), so stock nodes work on it. The
MODEL samples on Flux's schedule shifted for 32x32 pictures (as ``ModelSamplingFlux`` would).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..leapalign.shapes import spec
from ..leapalign.shapes.codec import ShapesCodec
from .demo_world import (
    DIFFUSION_PREFIX,
    ROWS_SUFFIX,
    TEXT_PREFIX,
    _tiny_flux_text_encoder_class,
    read_metadata,
    sparse_rows,
    split_world_state,
)
from .flux_shift import with_resolution_shift

__all__ = ["DIFFUSION_PREFIX", "ROWS_SUFFIX", "TEXT_PREFIX", "build_clip", "build_flux", "build_vae", "load_world",
           "sparse_rows", "split_world_state"]


def build_flux(diffusion_state: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32):
    """A Flux ``ModelPatcher`` with the shapes config; ``diffusion_state=None`` leaves weights uninitialised."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    from .comfy_compat import flux_unet_config_extras, load_flux_diffusion_state

    config = dict(spec.FLUX_CONFIG)
    config.update(flux_unet_config_extras(config["axes_dim"]))
    model_config = comfy.supported_models.Flux(config)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    if diffusion_state is not None:
        load_flux_diffusion_state(model, diffusion_state)
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def build_clip(text_state: dict[str, torch.Tensor] | None = None):
    """A ``comfy.sd.CLIP`` (Flux tokenizers, T5 padded to ``spec.T5_MIN_LENGTH``) holding ``text_state``."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux

    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer,
                                                    _tiny_flux_text_encoder_class())
    clip = comfy.sd.CLIP(target=target, tokenizer_data=dict(spec.TOKENIZER_DATA),
                         model_options={"dtype": torch.float32})
    if text_state is not None:
        missing, unexpected = clip.cond_stage_model.load_state_dict(text_state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"shapes text encoder: missing keys {missing}, unexpected keys {unexpected}")
    return clip


def build_vae():
    """ComfyUI's ``VAE`` around the shapes codec (16 latent channels, 8x spatial compression)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd

    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    codec = ShapesCodec().eval()
    vae.first_stage_model = codec.to(vae.vae_dtype)
    vae.latent_channels = spec.LATENT_CHANNELS
    vae.downscale_ratio = 8
    vae.upscale_ratio = 8
    vae.output_channels = 3
    vae.memory_used_encode = lambda shape, dtype: 256 * shape[2] * shape[3] * comfy.model_management.dtype_size(dtype)
    vae.memory_used_decode = lambda shape, dtype: 4096 * shape[2] * shape[3] * comfy.model_management.dtype_size(dtype)
    vae.patcher = comfy.model_patcher.ModelPatcher(codec, load_device=vae.device,
                                                   offload_device=comfy.model_management.vae_offload_device())
    vae.size = None
    vae.model_size()
    return vae


def load_world(path: str | Path | None = None, shift: bool = True):
    """(MODEL, CLIP, VAE, metadata) from a world file (default: the shipped one).

    ``shift`` puts the MODEL on Flux's schedule for the world's picture size (``ModelSamplingFlux``).
    """
    path = Path(path) if path is not None else spec.ASSETS_DIR / spec.WORLD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"shapes world file {path} is missing; regenerate it with "
                                "`python scripts/make_shapes_world.py`")
    diffusion, text = split_world_state(load_file(str(path)))
    model = build_flux(diffusion)
    if shift:
        model = with_resolution_shift(model, spec.IMAGE_SIZE, spec.IMAGE_SIZE)
    return model, build_clip(text), build_vae(), read_metadata(path)
