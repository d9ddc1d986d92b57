"""Chroma (Lodestone's Flux.1-schnell derivative; ComfyUI's ``model_base.Chroma``, a subclass of Flux).

* Blocks and module names as in Flux.1 (``double_blocks.N.img_attn.qkv``, ``single_blocks.N.linear1``),
  but no per-block modulation layers: one ``distilled_guidance_layer`` (an MLP "approximator") maps
  timestep, guidance and a block index to every block's modulation. The presets train the blocks'
  attention and MLP; the approximator is shared by every block and has no diffusers LoRA name that
  ComfyUI maps, so there is no modulation preset.
* Export: diffusers' PEFT layout on Flux's diffusers names (``transformer.transformer_blocks.0.attn.to_q
  .lora_A.weight``; single blocks' fused ``linear1`` as ``attn.to_q/to_k/to_v`` + ``proj_mlp``), scale
  folded into ``lora_B``. diffusers' ``ChromaTransformer2DModel`` loads it as it is (``ChromaPipeline``
  uses ``FluxLoraLoaderMixin``, whose kohya converter hard-codes Flux.1's widths), and ComfyUI's stock
  loader maps it onto the fused weights through ``comfy.utils.flux_to_diffusers``.
* Conditioning: the T5-XXL sequence only (no pooled vector, no guidance embedding: ComfyUI passes
  guidance 0 to the approximator unless a ``FluxGuidance`` node sets one). T5 here is not padded, so
  prompts of one batch must encode to the same token count (joint attention; repeating tokens would
  change it). Chroma is sampled with real CFG in ComfyUI's examples; the training rollout runs at cfg 1.
* Latent and schedule: Flux.1's 16-channel latent; ``ModelSamplingFlux`` at the model's shift
  (``KSampler`` with the model as loaded), the same at every size.
* Seam: the blocks are Flux's (in-place residual adds): the default seam.
"""

from __future__ import annotations

from ...leapalign.lora import LoRAError
from . import ModelFamily, pad_free_stack

_DOUBLE = r"^double_blocks\.\d+\."
ATTENTION = (_DOUBLE + r"(img|txt)_attn\.(qkv|proj)$", r"^single_blocks\.\d+\.linear1$")
MLP = (_DOUBLE + r"(img|txt)_mlp\.(0|2)$", r"^single_blocks\.\d+\.linear2$")
PRESETS = {
    "attention+mlp": ATTENTION + MLP,
    "attention": ATTENTION,
}
DIFFUSERS_PREFIX = "transformer."
_DOUBLE_NAMES = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
}


def diffusers_pieces(path: str, up_rows: int, in_features: int) -> list[tuple[str, int, int]]:
    """``(diffusers module, first row, rows)`` of ``lora_B`` for one ComfyUI module path (Flux's names)."""
    parts = path.split(".")
    if parts[0] == "double_blocks" and len(parts) >= 3:
        names = _DOUBLE_NAMES.get(".".join(parts[2:]))
        if names is not None:
            rows = up_rows // len(names)
            return [(f"transformer_blocks.{parts[1]}.{n}", i * rows, rows) for i, n in enumerate(names)]
    if parts[0] == "single_blocks" and len(parts) == 3:
        block = f"single_transformer_blocks.{parts[1]}"
        if parts[2] == "linear2":
            return [(f"{block}.proj_out", 0, up_rows)]
        if parts[2] == "linear1":  # q, k, v (hidden rows each) then the MLP input
            h = in_features
            return [(f"{block}.attn.to_q", 0, h), (f"{block}.attn.to_k", h, h), (f"{block}.attn.to_v", 2 * h, h),
                    (f"{block}.proj_mlp", 3 * h, up_rows - 3 * h)]
    raise LoRAError(f"LoRA target {path} has no diffusers Chroma name; train a preset of {sorted(PRESETS)} "
                    "instead of custom targets")


def export_diffusers(lora, weights, model) -> dict:
    sd = {}
    for path, (down, up) in lora.factors(weights).items():
        for module, start, rows in diffusers_pieces(path, up.shape[0], down.shape[1]):
            sd[f"{DIFFUSERS_PREFIX}{module}.lora_A.weight"] = down.clone()
            sd[f"{DIFFUSERS_PREFIX}{module}.lora_B.weight"] = up.narrow(0, start, rows).contiguous()
    return sd


FAMILY = ModelFamily(
    name="chroma",
    short="Chroma",
    display="Chroma",
    model_classes=("Chroma",),
    lora_presets=PRESETS,
    export_lora=export_diffusers,
    stack_context=pad_free_stack("Chroma"),
    loaders="UNETLoader (chroma-unlocked-v*.safetensors) with CLIPLoader (t5xxl, type chroma)",
)
