"""The embedded toy worlds' shared loader: ComfyUI's Flux, Flux text-encoder pair and VAE class at toy size.

Both worlds (digits: ``nodes/demo_world.py``, shapes: ``nodes/shapes_world.py``) are the same three
ComfyUI objects with different numbers: ComfyUI's own Flux class at the world's config, so training
nodes, ``LoraLoaderModelOnly`` and the samplers treat it exactly like Flux.1; ComfyUI's Flux
text-encoder pair (CLIP-L + T5, real tokenizers) at toy width; ComfyUI's ``VAE`` class wrapped around
the world's fixed linear codec, so stock ``VAEDecode``/``VAEEncode`` work. A world file stores the
diffusion model under ``diffusion_model.`` and the text encoders under ``text_encoders.``, with the
embedding tables reduced to the rows the world's prompts use (``<key>.rows`` holds their ids).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open

DIFFUSION_PREFIX = "diffusion_model."
TEXT_PREFIX = "text_encoders."
ROWS_SUFFIX = ".rows"


def build_flux(flux_config: dict, diffusion_state: dict[str, torch.Tensor] | None = None,
               dtype: torch.dtype = torch.float32):
    """A Flux ``ModelPatcher`` with ``flux_config``; ``diffusion_state=None`` leaves weights uninitialised."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    from .comfy_compat import flux_unet_config_extras, load_flux_diffusion_state

    config = dict(flux_config)
    config.update(flux_unet_config_extras(config["axes_dim"]))
    model_config = comfy.supported_models.Flux(config)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    if diffusion_state is not None:
        load_flux_diffusion_state(model, diffusion_state)
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def tiny_flux_text_encoder_class(clip_l_config: dict, t5_config: dict):
    """ComfyUI's Flux text-encoder pair (pooled CLIP-L, T5 sequence) with halves of the given configs."""
    import comfy.sd1_clip
    import comfy.text_encoders.flux
    import comfy.text_encoders.t5

    class ToyFluxTextEncoder(comfy.text_encoders.flux.FluxClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 (ComfyUI's signature)
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(
                device=device, dtype=dtype, textmodel_json_config=dict(clip_l_config),
                return_projected_pooled=False, model_options={**model_options, "model_name": "clip_l"})
            self.t5xxl = comfy.sd1_clip.SDClipModel(
                device=device, dtype=dtype, textmodel_json_config=dict(t5_config),
                special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                model_options={**model_options, "model_name": "t5xxl"})
            self.dtypes = {dtype}

    return ToyFluxTextEncoder


def build_clip(encoder_class, tokenizer_data: dict, text_state: dict[str, torch.Tensor] | None, world: str):
    """A ``comfy.sd.CLIP`` (Flux tokenizers with ``tokenizer_data``) holding ``text_state``."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux

    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer, encoder_class)
    clip = comfy.sd.CLIP(target=target, tokenizer_data=dict(tokenizer_data), model_options={"dtype": torch.float32})
    if text_state is not None:
        missing, unexpected = clip.cond_stage_model.load_state_dict(text_state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"{world} text encoder: missing keys {missing}, unexpected keys {unexpected}")
    return clip


def build_vae(codec: torch.nn.Module, latent_channels: int, encode_bytes_per_pixel: int):
    """ComfyUI's ``VAE`` around a world's linear codec (8x spatial compression)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd

    # ComfyUI's VAE class picks its architecture from state-dict keys; its pixel-space kind is the
    # smallest one, and every attribute that kind sets is overwritten below for the codec.
    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    codec = codec.eval()
    vae.first_stage_model = codec.to(vae.vae_dtype)
    vae.latent_channels = latent_channels
    vae.downscale_ratio = 8
    vae.upscale_ratio = 8
    vae.output_channels = 3
    size = comfy.model_management.dtype_size
    vae.memory_used_encode = lambda shape, dtype: encode_bytes_per_pixel * shape[2] * shape[3] * size(dtype)
    vae.memory_used_decode = lambda shape, dtype: 4096 * shape[2] * shape[3] * size(dtype)
    vae.patcher = comfy.model_patcher.ModelPatcher(codec, load_device=vae.device,
                                                   offload_device=comfy.model_management.vae_offload_device())
    vae.size = None
    vae.model_size()
    return vae


def split_world_state(state: dict[str, torch.Tensor], embedding_rows: dict[str, int],
                      world: str) -> tuple[dict, dict]:
    """A world file's tensors -> (diffusion-model state, full text-encoder state with sparse rows expanded).

    ``embedding_rows`` gives the full row count of each table a world may store as sparse rows.
    """
    diffusion = {k[len(DIFFUSION_PREFIX):]: v for k, v in state.items() if k.startswith(DIFFUSION_PREFIX)}
    text = {}
    for key, value in state.items():
        if not key.startswith(TEXT_PREFIX) or key.endswith(ROWS_SUFFIX):
            continue
        name = key[len(TEXT_PREFIX):]
        rows_key = key + ROWS_SUFFIX
        if rows_key in state:
            if name not in embedding_rows:
                raise ValueError(f"{world} world file: {name} is stored as sparse rows but is not an embedding table")
            value = expand_rows(value, state[rows_key], embedding_rows[name])
        text[name] = value
    return diffusion, text


def sparse_rows(table: torch.Tensor, row_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows ``row_ids`` of an embedding table (what a world file stores) and their ids."""
    row_ids = torch.as_tensor(row_ids, dtype=torch.int64).unique()
    return table[row_ids].clone(), row_ids


def expand_rows(values: torch.Tensor, row_ids: torch.Tensor, rows: int) -> torch.Tensor:
    """Inverse of :func:`sparse_rows`: a full table, zero where no row was stored."""
    table = torch.zeros((rows, values.shape[1]), dtype=values.dtype)
    table[row_ids.long()] = values
    return table


def read_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def read_world_file(path: Path, world: str, script: str) -> dict[str, torch.Tensor]:
    """A world file's tensors; a missing file is refused naming the script that regenerates it."""
    if not path.is_file():
        raise FileNotFoundError(f"{world} world file {path} is missing; regenerate it with `python {script}`")
    return load_file(str(path))
