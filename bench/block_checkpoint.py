"""Gradient checkpointing of Flux transformer blocks through ComfyUI's own block-replace patches.

Why a bench-side helper: the core checkpoints whole velocity calls of chained methods only; the two
LeapAlign leaps are not checkpointed, and a whole-call checkpoint still holds one call's activations
at once during recompute. Checkpointing each block bounds that to one block.

Two traps this avoids (both measured while writing it):

* ComfyUI's ``original_block`` closure binds the loop variable ``block`` late; recomputed during
  backward it would run the *last* block. The patch here calls the block it was registered for.
* Autograd recomputes a checkpointed block during backward, outside the diffusion-model wrapper,
  so everything the forward needed must be active again inside the recompute: the out-of-place
  adds seam is entered inside the checkpointed function, and the LoRA hooks are kept on for the
  whole step (forward and backward) with ``lora.applied`` instead of per model call.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint

WRAPPER_KEY = "leapalign_bench_seam"


def _patch(diffusion_model, kind: str, index: int, seam):
    def run_block(args: dict) -> dict:
        with seam():
            if kind == "double_block":
                img, txt = diffusion_model.double_blocks[index](
                    img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"],
                    attn_mask=args.get("attn_mask"), transformer_options=args.get("transformer_options"))
                return {"img": img, "txt": txt}
            img = diffusion_model.single_blocks[index](
                args["img"], vec=args["vec"], pe=args["pe"], attn_mask=args.get("attn_mask"),
                transformer_options=args.get("transformer_options"))
            return {"img": img}

    def patch(args: dict, extra: dict) -> dict:
        frozen = dict(args)
        if isinstance(frozen.get("transformer_options"), dict):
            frozen["transformer_options"] = dict(frozen["transformer_options"])
        if not torch.is_grad_enabled():
            return run_block(frozen)
        return checkpoint(run_block, frozen, use_reentrant=False)

    return patch


def seam_clone(model, checkpoint_blocks: bool):
    """A clone of ``model`` whose diffusion model runs under the pack's seam, optionally block-checkpointed.

    LoRA hooks are *not* applied here: keep ``lora.applied(diffusion_model)`` open around the whole
    step (forward and backward).
    """
    import comfy.patcher_extension

    from bench.comfy_env import pack_module

    seam = pack_module("nodes.autograd_seam").OutOfPlaceAdds
    training_mode = pack_module("nodes.comfy_compat").training_mode

    def wrapper(executor, *args, **kwargs):
        with seam(), training_mode():
            return executor(*args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, wrapper)
    if checkpoint_blocks:
        dm = model.model.diffusion_model
        for i in range(len(dm.double_blocks)):
            clone.set_model_patch_replace(_patch(dm, "double_block", i, seam), "dit", "double_block", i)
        for i in range(len(dm.single_blocks)):
            clone.set_model_patch_replace(_patch(dm, "single_block", i, seam), "dit", "single_block", i)
    return clone


@contextlib.contextmanager
def lora_for_step(lora, model):
    """LoRA hooks on for a whole step, so recomputation during backward sees them too."""
    with lora.applied(model.model.diffusion_model):
        yield
