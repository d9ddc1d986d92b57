"""HiDream-I1 (Full, Dev, Fast; ComfyUI's ``model_base.HiDream``, a dual- then single-stream DiT with
mixture-of-experts feed-forwards).

* LoRA targets on ComfyUI's module paths, which are diffusers' names (``double_stream_blocks.N.block``
  and ``single_stream_blocks.N.block``): the attention projections ``attn1.to_q/to_k/to_v/to_out``
  (and the text-stream ``*_t`` twins in dual-stream blocks), the SwiGLU layers ``w1/w2/w3`` of the
  shared expert, of every routed expert and of the text feed-forward ``ff_t``, and the modulation
  ``adaLN_modulation.1``. The router (``ff_i.gate``, a bare parameter) is not a target.
* Export: diffusers' PEFT layout (``transformer.double_stream_blocks.0.block.attn1.to_q.lora_A.weight``),
  which ComfyUI's stock loader maps (``transformer.`` prefix, SimpleTuner's format) for ``HiDream``
  models and ``HiDreamImagePipeline.load_lora_weights`` reads as is; ``alpha / rank`` folded into
  ``lora_B``.
* Conditioning: the T5 sequence, the CLIP-L + CLIP-G pooled output and the Llama-3.1 hidden states of
  every layer (``conditioning_llama3``, ``[B, layers, T, 4096]``), which the family asks the prompt
  encoder to carry (``encoder_extras``); no guidance. Prompts of one batch must encode to the same
  token count (joint attention).
* Sampling and velocity: ``ModelSamplingDiscreteFlow`` (CONST) with ComfyUI's default shift 1 (its
  HiDream sampling settings are empty); ComfyUI's templates put ``ModelSamplingSD3`` (shift 3 for Full,
  6 for Dev) in front, which the adapters read like ``KSampler``. The model returns the negated
  output of its ``t = sigma`` network, and ComfyUI's ``x - sigma * output`` then gives
  ``(x - denoised) / sigma`` as the velocity, as for every family.
* Seam: the blocks add out of place; the routed experts write into a fresh tensor by mask
  (``y[idx == i] = expert(...)``), which autograd records; top-k routing has zero gradient almost
  everywhere (the routing weights do get gradients). RoPE is Flux's (:func:`default_seam`).
"""

from __future__ import annotations

from . import ModelFamily, pad_free_stack, per_module_export

_BLOCK = r"^(double|single)_stream_blocks\.\d+\.block\."
ATTENTION = (_BLOCK + r"attn1\.(to_q|to_k|to_v|to_out)(_t)?$",)
MLP = (_BLOCK + r"ff_(i|t)\.((shared_experts|experts\.\d+)\.)?w(1|2|3)$",)
MODULATION = (_BLOCK + r"adaLN_modulation\.1$",)
PRESETS = {
    "attention+mlp": ATTENTION + MLP,
    "attention+mlp+modulation": ATTENTION + MLP + MODULATION,
    "attention": ATTENTION,
}
PREFIX = "transformer."


export_peft = per_module_export(PREFIX, "HiDream", ("double_stream_blocks.", "single_stream_blocks."), PRESETS)


FAMILY = ModelFamily(
    name="hidream",
    short="HiDream",
    display="HiDream-I1",
    model_classes=("HiDream",),
    lora_presets=PRESETS,
    export_lora=export_peft,
    encoder_extras=("conditioning_llama3",),
    stack_context=pad_free_stack("HiDream"),
    loaders="UNETLoader with QuadrupleCLIPLoader and VAELoader",
)
