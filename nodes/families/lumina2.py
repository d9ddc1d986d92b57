"""Z-Image and Lumina 2 (ComfyUI's ``model_base.Lumina2``, a single-stream NextDiT, for both).

ComfyUI builds Z-Image (``supported_models.ZImage``) and Lumina 2 (``supported_models.Lumina2``) as the
same ``model_base.Lumina2`` class; the unet config tells them apart (Z-Image: ``z_image_modulation``,
width 3840, Qwen3-4B text; Lumina 2: width 2304, grouped-query attention, Gemma-2-2B text). Only the
LoRA export differs, so one family covers both.

* LoRA targets on ComfyUI's module paths (Lumina's own names), in the main ``layers`` and in both
  refiners (``noise_refiner``: image tokens, ``context_refiner``: text tokens): the fused
  ``attention.qkv`` and ``attention.out``, the SwiGLU ``feed_forward.w1/w2/w3`` and the modulation
  (``adaLN_modulation.0`` in Z-Image, ``adaLN_modulation.1`` in Lumina 2; the context refiner has none).
* Export, Z-Image: diffusers' Z-Image names behind ComfyUI's ``diffusion_model.`` prefix
  (``diffusion_model.layers.0.attention.to_q.lora_A.weight``), built from ComfyUI's own
  ``comfy.utils.z_image_to_diffusers`` table: the fused q/k/v LoRA becomes three LoRAs sharing
  ``lora_A`` with ``lora_B`` split by rows. Both supported ComfyUI versions map that prefix for
  ``Lumina2`` models (0.3.75 maps no ``transformer.`` prefix there), and ``ZImagePipeline``'s loader
  strips it. ``alpha / rank`` is folded into ``lora_B``.
* Export, Lumina 2: ComfyUI's own names (``diffusion_model.layers.0.attention.qkv.lora_A.weight``),
  which ComfyUI maps generically and diffusers' ``Lumina2Pipeline`` converts (its converter splits q/k/v
  at the real model's 2304/768/768 rows and wants every target of a block, so only full-width files
  of the ``attention+mlp+modulation`` preset load there). ComfyUI's Z-Image table assumes as many
  key/value heads as query heads, which Lumina 2 does not have, so it is not used for Lumina 2.
* Conditioning: the text encoder's sequence only (no pooled output, no guidance); the encoder's
  attention mask is all ones for a single unpadded prompt, and ``num_tokens`` then equals the
  sequence length that ComfyUI takes when no mask is given. Prompts of one batch must encode to the
  same token count (joint attention, no padding).
* Sampling and velocity: ``ModelSamplingDiscreteFlow`` (CONST; shift 3 for Z-Image, 6 for Lumina 2).
  NextDiT runs on ``t = 1 - sigma`` and returns the negated output, so ComfyUI's
  ``denoised = x - sigma * output`` holds with ``output`` the velocity and ``(x - denoised) / sigma``
  is read as for every family.
* Seam: the blocks add out of place; RoPE and, on newer ComfyUI, a fused RMS-norm + RoPE op take their
  pure-torch path under ``comfy.model_management.in_training`` (:func:`default_seam`). The model's
  ``forward`` runs ComfyUI's ``DIFFUSION_MODEL`` wrappers.
"""

from __future__ import annotations

from ...leapalign.lora import LoRAError
from . import ModelFamily, pad_free_stack

_BLOCK = r"^(layers|noise_refiner|context_refiner)\.\d+\."
ATTENTION = (_BLOCK + r"attention\.(qkv|out)$",)
MLP = (_BLOCK + r"feed_forward\.w(1|2|3)$",)
MODULATION = (r"^(layers|noise_refiner)\.\d+\.adaLN_modulation\.(0|1)$",)
PRESETS = {
    "attention+mlp": ATTENTION + MLP,
    "attention+mlp+modulation": ATTENTION + MLP + MODULATION,
    "attention": ATTENTION,
}
PREFIX = "diffusion_model."


def is_z_image(unet_config) -> bool:
    return bool(unet_config.get("z_image_modulation", False))


def z_image_names(unet_config) -> dict[str, list[tuple[str, tuple | None]]]:
    """ComfyUI module path -> [(diffusers Z-Image module path, (dim, start, length) or None)].

    Inverts ComfyUI's ``z_image_to_diffusers`` (diffusers weight key -> ComfyUI weight key or a row
    slice of a fused weight).
    """
    import comfy.utils

    out: dict[str, list] = {}
    for diffusers_key, target in comfy.utils.z_image_to_diffusers(unet_config).items():
        if not diffusers_key.endswith(".weight"):
            continue
        key, offset = (target, None) if isinstance(target, str) else (target[0], tuple(target[1]))
        if key.endswith(".weight"):
            out.setdefault(key[: -len(".weight")], []).append((diffusers_key[: -len(".weight")], offset))
    return out


def export_lumina(lora, weights, model) -> dict:
    unet_config = model.model.model_config.unet_config
    names = z_image_names(unet_config) if is_z_image(unet_config) else None
    sd = {}
    for path, (down, up) in lora.factors(weights).items():
        pieces = [(path, None)] if names is None else names.get(path)
        if not pieces:
            raise LoRAError(f"LoRA target {path} has no diffusers Z-Image name; train a preset of "
                            f"{sorted(PRESETS)} instead of custom targets")
        for module, offset in pieces:
            piece = up.narrow(*offset) if offset is not None else up
            sd[f"{PREFIX}{module}.lora_A.weight"] = down.clone().contiguous()
            sd[f"{PREFIX}{module}.lora_B.weight"] = piece.clone().contiguous()
    return sd


FAMILY = ModelFamily(
    name="lumina2",
    short="Z-Image/Lumina 2",
    display="Z-Image / Lumina 2",
    model_classes=("Lumina2",),
    lora_presets=PRESETS,
    export_lora=export_lumina,
    stack_context=pad_free_stack("Z-Image/Lumina 2"),
    loaders="UNETLoader with CLIPLoader (type lumina2) and VAELoader",
)
