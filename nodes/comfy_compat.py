"""Every difference between the ComfyUI versions this pack supports, in one place.

CI runs the pinned 0.3.75. Known differences in newer releases:

* 0.8+ runs Flux RoPE through a ``comfy_kitchen`` custom op that only has an autograd formula while
  ``comfy.model_management.in_training`` is true (ComfyUI's own trainer sets it). :func:`training_mode`
  sets it for the duration of a differentiable model call and restores it; on 0.3.75 the flag does
  not exist and nothing happens.
* 0.12+ adds a required ``txt_ids_dims`` field to ``FluxParams`` (:func:`flux_unet_config_extras`).
* 0.12+ can apply LoRAs in "bypass" mode (dynamic VRAM): the weight stays untouched and an adapter
  adds its output in forward. The trainable LoRA here adds its output through forward hooks on the
  same modules, so both compose; the trained LoRA is applied to the output MODEL through
  ``comfy.sd.load_lora_for_models`` (:func:`apply_lora`), whatever mode that ComfyUI picks.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping

import torch


def comfy_version() -> str:
    try:
        import comfyui_version  # ComfyUI's own top-level module

        return str(comfyui_version.__version__)
    except Exception:  # very old checkouts have no version module
        return "unknown"


@contextlib.contextmanager
def training_mode() -> Iterator[None]:
    """Tell ComfyUI that autograd must work through its custom ops (0.8+); no-op on older versions."""
    import comfy.model_management as mm

    if not hasattr(mm, "in_training"):
        yield
        return
    previous = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = previous


def flux_unet_config_extras(axes_dim) -> dict:
    """Extra ``FluxParams`` fields newer ComfyUI requires when a Flux model is built from a config."""
    from comfy.ldm.flux.model import FluxParams

    fields = {f.name for f in dataclasses.fields(FluxParams)}
    extras = {}
    if "txt_ids_dims" in fields:
        # 0.12+: which RoPE axes the text ids fill; Flux.1 uses none (all text positions are zero).
        extras["txt_ids_dims"] = []
    return extras


def apply_lora(model_patcher, lora_sd: Mapping[str, torch.Tensor], strength: float = 1.0):
    """A clone of ``model_patcher`` with the LoRA patched in, as ``LoraLoaderModelOnly`` does it."""
    import comfy.sd

    patched, _ = comfy.sd.load_lora_for_models(model_patcher, None, dict(lora_sd), strength, 0)
    return patched
