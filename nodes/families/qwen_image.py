"""Qwen-Image (and its edit variants; ComfyUI's ``model_base.QwenImage``, a dual-stream MMDiT).

* LoRA targets on ComfyUI's module paths, which are diffusers' names (ComfyUI's port keeps them):
  per ``transformer_blocks.N`` the image and text projections of the joint attention (``attn.to_q``
  ... ``attn.to_add_out``), the two GELU MLPs (``img_mlp.net.0.proj``, ``img_mlp.net.2``, same for
  ``txt_mlp``) and the modulations ``img_mod.1`` / ``txt_mod.1``.
* Export: diffusers' PEFT layout (``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``), the
  layout ``QwenImagePipeline.load_lora_weights`` reads without conversion and that ComfyUI's stock
  loader maps (``transformer.`` prefix) for ``QwenImage`` models; ``alpha / rank`` is folded into
  ``lora_B`` (diffusers takes no alpha; ComfyUI applies 1 when none is given).
* Conditioning: the Qwen2.5-VL sequence only (no pooled output, no guidance); its all-ones attention
  mask is dropped by the encoder itself. Text and image tokens attend jointly: prompts of one batch
  must encode to the same token count.
* Sampling: ``ModelSamplingFlux`` (CONST) with shift 1.15 by default; workflows usually patch it with
  ``ModelSamplingAuraFlow`` (shift 3.1), which the adapters read from the model as ``KSampler`` does.
* Latents: the Wan 2.1 VAE's, 16 channels with a time axis ``[B, 16, 1, h, w]``
  (``latent_format.latent_dimensions`` 3); ``adapters.sample_latent_shape`` and ``make_decoder`` handle it.
* Seam: the blocks add into the residual stream out of place; RoPE goes through
  ``comfy.ldm.flux.math.apply_rope1`` like Flux, so :func:`default_seam` (training switches) applies.
  The model's ``forward`` runs ComfyUI's ``DIFFUSION_MODEL`` wrappers.
"""

from __future__ import annotations

from . import ModelFamily, pad_free_stack, per_module_export

_BLOCK = r"^transformer_blocks\.\d+\."
ATTENTION = (_BLOCK + r"attn\.(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj|to_out\.0|to_add_out)$",)
MLP = (_BLOCK + r"(img|txt)_mlp\.net\.(0\.proj|2)$",)
MODULATION = (_BLOCK + r"(img|txt)_mod\.1$",)
PRESETS = {
    "attention+mlp": ATTENTION + MLP,
    "attention+mlp+modulation": ATTENTION + MLP + MODULATION,
    "attention": ATTENTION,
}
PREFIX = "transformer."


export_peft = per_module_export(PREFIX, "Qwen-Image", ("transformer_blocks.",), PRESETS)


FAMILY = ModelFamily(
    name="qwen_image",
    short="Qwen-Image",
    display="Qwen-Image",
    model_classes=("QwenImage",),
    lora_presets=PRESETS,
    export_lora=export_peft,
    stack_context=pad_free_stack("Qwen-Image"),
    loaders="UNETLoader with CLIPLoader (type qwen_image) and VAELoader",
)
