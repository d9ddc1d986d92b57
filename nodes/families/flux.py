"""Flux.1 (dev, schnell, Kontext; ComfyUI's ``model_base.Flux``).

* LoRA targets on ComfyUI's module paths, which are BFL's (fused ``img_attn.qkv``, ``linear1``).
* Export: kohya's layout on those names with ``.alpha``; ComfyUI loads it natively, diffusers
  through ``_convert_kohya_flux_lora_to_diffusers`` (every one of its 494 Flux.1 targets).
* Conditioning: CLIP-L pooled output + T5 sequence (from the text encoder) and the guidance
  embedding (``FluxGuidance``'s value); prompts of different lengths are batched the way ComfyUI
  batches cross-attention conditionings (repeat to the LCM).
* Seam: blocks add into the residual stream in place after a LayerNorm saved it (``img += ...``),
  and RoPE runs through a custom op on newer ComfyUI: :func:`default_seam` handles both.
"""

from __future__ import annotations

from ..flux_shift import with_resolution_shift
from . import ModelFamily

ATTENTION_MLP = (
    r"^double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)$",
    r"^double_blocks\.\d+\.(img|txt)_mlp\.(0|2)$",
    r"^single_blocks\.\d+\.linear(1|2)$",
)
MODULATION = (
    r"^double_blocks\.\d+\.(img|txt)_mod\.lin$",
    r"^single_blocks\.\d+\.modulation\.lin$",
)
PRESETS = {
    "attention+mlp": ATTENTION_MLP,
    "attention+mlp+modulation": ATTENTION_MLP + MODULATION,
    "attention": (r"^double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)$", r"^single_blocks\.\d+\.linear1$"),
}


def export_kohya(lora, weights, model) -> dict:
    return lora.kohya_state_dict(weights=weights)


def stack_cross_attention(tensors):
    import comfy.conds

    first = comfy.conds.CONDCrossAttn(tensors[0])
    return first.concat([comfy.conds.CONDCrossAttn(t) for t in tensors[1:]])


FAMILY = ModelFamily(
    name="flux1",
    short="Flux",
    display="Flux.1",
    model_classes=("Flux",),
    lora_presets=PRESETS,
    export_lora=export_kohya,
    conditioning_extras=lambda guidance: {"guidance": float(guidance)},
    stack_context=stack_cross_attention,
    resolution_schedule=with_resolution_shift,
    memory_plan=True,
)
