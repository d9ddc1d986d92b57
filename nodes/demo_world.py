"""Build the digits world as real ComfyUI objects: a Flux ``ModelPatcher``, a ``comfy.sd.CLIP`` and a ``comfy.sd.VAE``.

The model is ComfyUI's own Flux class at toy width, so the training nodes, ``LoraLoaderModelOnly``
and the samplers treat it exactly like Flux.1. The prompt encoder is ComfyUI's Flux text-encoder
pair (CLIP-L + T5, real tokenizers) at toy width. The VAE is ComfyUI's ``VAE`` class wrapped around
the world's fixed linear codec (``leapalign.demo.codec``), so stock ``VAEDecode``/``VAEEncode`` work.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open

from ..leapalign.demo import spec
from ..leapalign.demo.codec import DigitsCodec

DIFFUSION_PREFIX = "diffusion_model."
TEXT_PREFIX = "text_encoders."
ROWS_SUFFIX = ".rows"


def build_flux(diffusion_state: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32):
    """A Flux ``ModelPatcher`` with the world's config; ``diffusion_state=None`` leaves weights uninitialised."""
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


def _tiny_flux_text_encoder_class():
    import comfy.sd1_clip
    import comfy.text_encoders.flux
    import comfy.text_encoders.t5

    class DigitsTextEncoder(comfy.text_encoders.flux.FluxClipModel):
        """ComfyUI's Flux text-encoder pair (pooled CLIP-L, T5 sequence) with toy-width halves."""

        def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 (ComfyUI's signature)
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(
                device=device, dtype=dtype, textmodel_json_config=dict(spec.CLIP_L_CONFIG),
                return_projected_pooled=False, model_options={**model_options, "model_name": "clip_l"})
            self.t5xxl = comfy.sd1_clip.SDClipModel(
                device=device, dtype=dtype, textmodel_json_config=dict(spec.T5_CONFIG),
                special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                model_options={**model_options, "model_name": "t5xxl"})
            self.dtypes = {dtype}

    return DigitsTextEncoder


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
            raise ValueError(f"digits text encoder: missing keys {missing}, unexpected keys {unexpected}")
    return clip


def build_vae():
    """ComfyUI's ``VAE`` around the world's linear codec (16 latent channels, 8x spatial compression)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd

    # ComfyUI's VAE class picks its architecture from state-dict keys; its pixel-space kind is the
    # smallest one, and every attribute that kind sets is overwritten below for the codec.
    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    codec = DigitsCodec().eval()
    vae.first_stage_model = codec.to(vae.vae_dtype)
    vae.latent_channels = 16
    vae.downscale_ratio = 8
    vae.upscale_ratio = 8
    vae.output_channels = 3
    vae.memory_used_encode = lambda shape, dtype: 64 * shape[2] * shape[3] * comfy.model_management.dtype_size(dtype)
    vae.memory_used_decode = lambda shape, dtype: 4096 * shape[2] * shape[3] * comfy.model_management.dtype_size(dtype)
    vae.patcher = comfy.model_patcher.ModelPatcher(codec, load_device=vae.device,
                                                   offload_device=comfy.model_management.vae_offload_device())
    vae.size = None
    vae.model_size()
    return vae


def split_world_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """A world file's tensors -> (diffusion-model state, full text-encoder state with sparse rows expanded)."""
    diffusion = {k[len(DIFFUSION_PREFIX):]: v for k, v in state.items() if k.startswith(DIFFUSION_PREFIX)}
    text = {}
    for key, value in state.items():
        if not key.startswith(TEXT_PREFIX) or key.endswith(ROWS_SUFFIX):
            continue
        name = key[len(TEXT_PREFIX):]
        rows_key = key + ROWS_SUFFIX
        if rows_key in state:
            value = expand_rows(value, state[rows_key], _embedding_rows(name))
        text[name] = value
    return diffusion, text


def _embedding_rows(name: str) -> int:
    if name == spec.CLIP_L_EMBEDDING_KEY:
        return spec.CLIP_L_CONFIG["vocab_size"]
    if name == spec.T5_EMBEDDING_KEY:
        return spec.T5_CONFIG["vocab_size"]
    raise ValueError(f"digits world file: {name} is stored as sparse rows but is not an embedding table")


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


def load_world(path: str | Path | None = None):
    """(MODEL, CLIP, VAE, metadata) from a world file (default: the shipped one)."""
    path = Path(path) if path is not None else spec.ASSETS_DIR / spec.WORLD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"digits world file {path} is missing; regenerate it with "
                                "`python scripts/make_demo_world.py`")
    diffusion, text = split_world_state(load_file(str(path)))
    metadata = read_metadata(path)
    return build_flux(diffusion), build_clip(text), build_vae(), metadata

