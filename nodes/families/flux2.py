"""Flux.2 (dev, Klein; ComfyUI's ``model_base.Flux2``, a subclass of Flux with BFL's Flux.2 layout).

* Blocks as in Flux.1 (``double_blocks.N.img_attn.qkv``, ``single_blocks.N.linear1``...), without
  biases, with gated SiLU MLPs; modulation is global: one ``double_stream_modulation_img``/``_txt``
  and one ``single_stream_modulation`` shared by all blocks instead of one per block.
* Export: ``diffusion_model.<module>.lora_A/lora_B.weight`` (the "ai-toolkit" layout) with the scale
  ``alpha / rank`` folded into ``lora_B``. ComfyUI's stock loader reads it through its generic
  ``diffusion_model.*`` names; diffusers' ``Flux2LoraLoaderMixin`` converts it onto
  ``Flux2Transformer2DModel`` for every target, the global modulation included (its kohya converter
  drops the modulation layers, so kohya is not used here).
* Conditioning: the text encoder's sequence (Mistral Small 3 for dev, Qwen 3 for Klein), no pooled
  vector, and the guidance embedding (``FluxGuidance``; Klein has no guidance input and ignores it).
  ``model_base.Flux2`` left-pads every prompt with zeros to 512 tokens, so padding the shorter
  prompts of a batch with zeros on the left to the longest one gives each prompt exactly the input
  it gets alone; prompts longer than 512 tokens must be batched with equal lengths.
* Latent: 128 channels at 1/16 of the image size (the VAE's 32 channels packed 2x2), patch size 1.
* Schedule: ComfyUI's ``Flux2Scheduler`` (``comfy_extras/nodes_flux.py``): ``mu`` from the image token
  count and the step count, sigma = ``exp(mu) / (exp(mu) + 1/t - 1)``. The training node samples on
  that grid through ``ModelSamplingFlux`` with ``shift = mu`` (the same formula on the ``simple``
  scheduler's t = 1 - i/steps).
* Seam: the blocks are Flux's (``comfy/ldm/flux/layers.py``, in-place residual adds): the default seam.
"""

from __future__ import annotations

import torch

from ..flux_shift import with_flux_shift
from . import ModelFamily, per_module_export

_DOUBLE = r"^double_blocks\.\d+\."
ATTENTION = (_DOUBLE + r"(img|txt)_attn\.(qkv|proj)$", r"^single_blocks\.\d+\.linear1$")
MLP = (_DOUBLE + r"(img|txt)_mlp\.(0|2)$", r"^single_blocks\.\d+\.linear2$")
MODULATION = (r"^double_stream_modulation_(img|txt)\.lin$", r"^single_stream_modulation\.lin$")
PRESETS = {
    "attention+mlp": ATTENTION + MLP,
    "attention+mlp+modulation": ATTENTION + MLP + MODULATION,
    "attention": ATTENTION,
}
PREFIX = "diffusion_model."
TEXT_TOKENS = 512  # model_base.Flux2.extra_conds pads shorter prompts to this many tokens


export_diffusion_model_layout = per_module_export(PREFIX, "Flux.2")


def stack_left_padded(tensors):
    """Left-pad shorter prompt encodings with zeros to the longest, as ``model_base.Flux2`` pads to 512."""
    longest = max(int(t.shape[1]) for t in tensors)
    lengths = sorted({int(t.shape[1]) for t in tensors})
    if len(lengths) > 1 and longest > TEXT_TOKENS:
        raise ValueError(f"prompts of one batch encode to different token counts {lengths}, more than "
                         f"{TEXT_TOKENS}, which Flux.2 cannot batch exactly; shorten the long prompts or use "
                         "batch_size 1")
    return torch.cat([torch.nn.functional.pad(t, (0, 0, longest - t.shape[1], 0)) for t in tensors])


def empirical_mu(image_tokens: int, steps: int) -> float:
    """``compute_empirical_mu`` of ComfyUI's ``Flux2Scheduler`` (fitted by BFL on Flux.2's schedules)."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if image_tokens > 4300:
        return float(a2 * image_tokens + b2)
    m_200 = a2 * image_tokens + b2
    m_10 = a1 * image_tokens + b1
    a = (m_200 - m_10) / 190.0
    return float(a * steps + m_200 - 200.0 * a)


def flux2_schedule(model, width: int, height: int, steps: int | None):
    """A clone of ``model`` sampling on ``Flux2Scheduler``'s grid for this size and step count."""
    if steps is None:
        raise ValueError("Flux.2's schedule depends on the number of sampling steps; pass them")
    return with_flux_shift(model, empirical_mu(round(width * height / (16 * 16)), steps))


FAMILY = ModelFamily(
    name="flux2",
    short="Flux.2",
    display="Flux.2",
    model_classes=("Flux2",),
    lora_presets=PRESETS,
    export_lora=export_diffusion_model_layout,
    conditioning_extras=lambda guidance: {"guidance": float(guidance)},
    stack_context=stack_left_padded,
    resolution_schedule=flux2_schedule,
    latent_downscale=16,
    loaders="UNETLoader (flux2_dev_fp8mixed.safetensors) with CLIPLoader (type flux2)",
)
