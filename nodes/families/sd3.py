"""Stable Diffusion 3 / 3.5 (Medium, Large, Large Turbo; ComfyUI's ``model_base.SD3``, an MMDiT).

* LoRA targets on ComfyUI's MMDiT module paths: per joint block an ``x_block`` (image stream) and a
  ``context_block`` (text stream), each with fused ``attn.qkv``, ``attn.proj``, ``mlp.fc1/fc2`` and
  ``adaLN_modulation.1``; SD3.5 Medium's MMDiT-X adds ``x_block.attn2`` in its first blocks, and the
  last context block is "pre only" (no projection, no MLP).
* Export: diffusers' PEFT layout (``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``), the
  layout diffusers' ``SD3LoraLoaderMixin`` reads (it has no converter for kohya SD3 files) and that
  ComfyUI's stock loader maps onto its fused weights. The names come from ComfyUI's own
  ``comfy.utils.mmdit_to_diffusers`` table: a fused q/k/v LoRA is written as three LoRAs sharing
  ``lora_A`` with ``lora_B`` split by rows, and the last context block's modulation, whose halves
  diffusers stores swapped, gets its ``lora_B`` rows swapped the same way. The scale ``alpha / rank``
  is folded into ``lora_B`` (diffusers' loader takes no alpha; ComfyUI applies 1 when none is given).
* Conditioning: the text encoder's sequence (CLIP-L + CLIP-G + T5) and pooled output; no guidance
  embedding. The image and text tokens attend jointly, so prompts of one batch must encode to the
  same token count (ComfyUI's cross-attention LCM repeat would change the attention).
* Sampling: ``ModelSamplingDiscreteFlow`` with the model's shift (3.0 by default,
  ``ModelSamplingSD3`` overrides it); the adapters read it from the model like ``KSampler`` does.
* Seam: the joint blocks compute out of place (gradients with and without the out-of-place seam are
  equal); ComfyUI's MMDiT file adds in place only in context-processor blocks SD3.5 does not use and
  in ControlNet adds, which :func:`default_seam` covers as for Flux. The MMDiT's ``forward`` does not run ComfyUI's ``DIFFUSION_MODEL``
  wrappers, so the seam and the LoRA hooks ride on the ``APPLY_MODEL`` wrapper instead.
"""

from __future__ import annotations

from ...leapalign.lora import LoRAError
from . import ModelFamily, pad_free_stack

_BLOCK = r"^joint_blocks\.\d+\."
ATTENTION = (_BLOCK + r"(x|context)_block\.attn2?\.(qkv|proj)$",)
MLP = (_BLOCK + r"(x|context)_block\.mlp\.fc(1|2)$",)
MODULATION = (_BLOCK + r"(x|context)_block\.adaLN_modulation\.1$",)
PRESETS = {
    "attention+mlp": ATTENTION + MLP,
    "attention+mlp+modulation": ATTENTION + MLP + MODULATION,
    "attention": ATTENTION,
}
DIFFUSERS_PREFIX = "transformer."


def diffusers_names(unet_config) -> dict[str, list[tuple[str, tuple | None, object]]]:
    """ComfyUI module path -> [(diffusers module path, (dim, start, length) or None, row function or None)].

    Inverts ComfyUI's ``mmdit_to_diffusers`` (diffusers weight key -> ComfyUI weight key, a slice of a
    fused weight, or a key with a function applied to the diffusers tensor).
    """
    import comfy.utils

    out: dict[str, list] = {}
    for diffusers_key, target in comfy.utils.mmdit_to_diffusers(unet_config).items():
        if not diffusers_key.endswith(".weight"):
            continue
        if isinstance(target, str):
            key, offset, fn = target, None, None
        else:
            key, offset, fn = (tuple(target) + (None,))[:3]
        if key.endswith(".weight"):
            out.setdefault(key[: -len(".weight")], []).append((diffusers_key[: -len(".weight")], offset, fn))
    return out


def export_diffusers(lora, weights, model) -> dict:
    names = diffusers_names(model.model.model_config.unet_config)
    sd = {}
    for path, (down, up) in lora.factors(weights).items():
        if path not in names:
            raise LoRAError(f"LoRA target {path} has no diffusers SD3 name; train a preset of "
                            f"{sorted(PRESETS)} instead of custom targets")
        for module, offset, fn in names[path]:
            piece = up.narrow(offset[0], offset[1], offset[2]) if offset is not None else up
            if fn is not None:
                piece = fn(piece)  # swapping the two row halves is its own inverse
            sd[f"{DIFFUSERS_PREFIX}{module}.lora_A.weight"] = down.clone()
            sd[f"{DIFFUSERS_PREFIX}{module}.lora_B.weight"] = piece.contiguous()
    return sd


FAMILY = ModelFamily(
    name="sd3",
    short="SD3",
    display="SD3 / SD3.5",
    model_classes=("SD3",),
    lora_presets=PRESETS,
    export_lora=export_diffusers,
    stack_context=pad_free_stack("SD3"),
    wrapper="APPLY_MODEL",
    loaders="CheckpointLoaderSimple, or UNETLoader with TripleCLIPLoader",
)
