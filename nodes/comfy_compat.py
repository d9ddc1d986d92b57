"""Every difference between the ComfyUI versions this pack supports, in one place.

Supported: ComfyUI 0.3.75 (the pinned copy CI runs) up to 0.33 (CI also runs the integration suite
against a 0.33.0 source tree). Every workaround below detects the feature it depends on (an
attribute, a dataclass field, a key name); nothing branches on a version string. Each entry names
the releases that introduced the difference, so a workaround can be dropped when the oldest
supported release has the feature:

===============================  ==========  ===========================================================
difference                       versions    what this module does
===============================  ==========  ===========================================================
``cache_args["ram_inactive"]``   0.23+       :func:`executor_cache_args` always passes it (older
                                             executors ignore unknown keys).
Flux q/k norms are torch         0.14+       :func:`load_flux_diffusion_state` renames keys through the
``RMSNorm`` (``.scale`` ->                   model config's ``process_unet_state_dict`` (what ComfyUI's
``.weight``)                                 loaders do) before ``strict=True`` loading;
                                             :func:`canonical_flux_state_dict` writes files in the BFL
                                             layout (``.scale``) that every version reads.
Flux RoPE through a              0.8+        :func:`training_mode`: from 0.14 on it sets
``comfy_kitchen`` op without                 ``comfy.model_management.in_training`` (ComfyUI then takes
autograd                                     its pure-torch RoPE); on 0.8-0.13 (op, no flag) it swaps
                                             ComfyUI's own pure-torch ``_apply_rope``/``_apply_rope1``
                                             in for the op while a differentiable call runs.
required ``FluxParams``          0.12+       :func:`flux_unet_config_extras`.
``txt_ids_dims``
required ``ChromaParams``        by 0.33     :func:`params_extras` adds the fields a model's params
``txt_ids_dims``, ``vec_in_dim``             dataclass has (Chroma: no text ids, no pooled vector).
Flux.2 text ids                  by 0.33     ``txt_ids_dims = [3]`` where ``FluxParams`` has the field;
                                             before, Flux's forward fills axis 3 for any 4-axis RoPE
                                             (the same ids).
Flux.2 latent                    by 0.33     ``latent_format.spacial_downscale_ratio`` (16) only exists
downscale ratio                              later; the Flux.2 family states 16 itself.
Flux.2 / Chroma detection from  by 0.33     nothing to do (tests build tiny models through
state-dict keys                              ``supported_models``): 0.3.75 fixes Flux.2 at 48 heads
                                             (width 6144 only), later ones infer heads as width / 128;
                                             both fix Chroma's approximator (width 3072 only).
VAE output step in place         0.18+       Decoders must return a tensor that owns its memory (the
(``image.add_(1).div_(2)``)                  demo codec does); ``VAE.process_output`` then writes into it.
diffusion model weights frozen   0.30+       :func:`trainable` switches ``requires_grad`` back on where
at construction                              a script trains a model's own weights.
``import comfy.sd`` needs        0.20+       a set-up matter (``scripts/setup.sh`` installs it).
torchaudio
``PromptServer.instance`` used   0.14+       :func:`headless_server_attributes`: the headless stand-in
while built-in nodes load                    gets a real ``NodeReplaceManager`` so
(``nodes_replacements.py``)                  ``nodes_replacements.py`` loads.
``ProgressBar`` throttles hook   0.9.2+      nothing to do: the training node checks for Cancel itself
calls (100 ms / 0.5 %)                       (``throw_exception_if_processing_interrupted``) each step,
                                             and first and last updates are never dropped.
dynamic VRAM (comfy-aimdo)       0.12+ on    :func:`static_weights_clone`: the training clone is
                                 NVIDIA GPUs ComfyUI's non-dynamic delegate, so the forward that
                                             autograd records uses the stored, patched weights.
V3 nodes: ``io.Schema`` fields,  0.3.75 and  nothing to do: the pack's nodes use only what both have
``comfy_entrypoint``,            0.33 alike  (``io.ComfyNode``, ``io.Schema``, ``io.Custom``, tooltips,
``ComfyExtension``                           ``io.NodeOutput(..., ui=...)``); both register a module's
                                             ``comfy_entrypoint`` nodes only when it has no
                                             ``NODE_CLASS_MAPPINGS`` (the pack root defines none).
``ComfyExtension.on_load``       after       the pack's extension does its work in ``get_node_list``
awaited                          0.3.75      only, which both versions await.
V3 output names                  0.3.75 and  an output's ``display_name`` (not its id) is the V1
                                 0.33 alike  ``RETURN_NAMES`` entry and output ids must differ from input
                                             ids: every output gives ``display_name`` (the training node's
                                             MODEL output is id ``trained_model``, shown as ``model``).
V3 combo values checked         after       :func:`nodes.widgets.combo_problem`: each node's
against their options by         0.3.75      ``validate_inputs`` names its combo inputs and checks them
ComfyUI's validation                         itself (ComfyUI then leaves those inputs to it), so a bad
                                             value is refused before training on every version.
LoRA "bypass" adapters           0.12+       nothing to do: they replace a layer's ``forward``; the
(``LoraLoaderBypass...``)                    trainable LoRA is a forward hook, which adds its output to
                                             whatever ``forward`` returns, and the bypass sum is out of
                                             place. ``bench/gpu_flux.py`` checks both on a GPU.
===============================  ==========  ===========================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping

import torch


def comfy_version() -> str:
    """ComfyUI's version string, for messages and reports only (never for deciding behaviour)."""
    try:
        import comfyui_version  # ComfyUI's own top-level module

        return str(comfyui_version.__version__)
    except Exception:  # very old checkouts have no version module
        return "unknown"


# --------------------------------------------------------------------------- executor and boot

def executor_cache_args() -> dict:
    """``cache_args`` for ``execution.PromptExecutor``: no output caching beyond the prompt.

    ``ram_inactive`` is read by the executor from 0.23 on; older executors read only the keys they know.
    """
    return {"lru": 0, "ram": 0, "ram_inactive": 0}


def headless_server_attributes() -> dict:
    """Attributes a headless ``PromptServer`` stand-in needs beyond the executor's messaging ones.

    From 0.14 on, ``comfy_extras/nodes_replacements.py`` registers node replacements on
    ``PromptServer.instance.node_replace_manager`` while ComfyUI loads its built-in nodes.
    """
    try:
        from app.node_replace_manager import NodeReplaceManager  # ComfyUI's app package (0.14+)
    except ImportError:
        return {}
    return {"node_replace_manager": NodeReplaceManager()}


# --------------------------------------------------------------------------- Flux models

def flux_unet_config_extras(axes_dim) -> dict:
    """Extra ``FluxParams`` fields newer ComfyUI requires when a Flux model is built from a config."""
    from comfy.ldm.flux.model import FluxParams

    fields = {f.name for f in dataclasses.fields(FluxParams)}
    extras = {}
    if "txt_ids_dims" in fields:
        # 0.12+: which RoPE axes the text ids fill; Flux.1 uses none (all text positions are zero).
        extras["txt_ids_dims"] = []
    return extras


def params_extras(params_class: type, wanted: Mapping) -> dict:
    """The entries of ``wanted`` whose names are fields of the ``params_class`` dataclass on this ComfyUI.

    Newer ComfyUI adds required fields to the params dataclasses its DiT models are built from
    (``FluxParams``, ``ChromaParams``); an older one rejects fields it does not know.
    """
    fields = {f.name for f in dataclasses.fields(params_class)}
    return {name: value for name, value in wanted.items() if name in fields}


def load_flux_diffusion_state(model, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a BFL-layout Flux state dict into ``model.diffusion_model`` strictly, as ComfyUI's loaders would.

    ``model`` is a ``comfy.model_base.Flux``; its ``model_config.process_unet_state_dict`` maps file keys
    to this version's module names (identity before 0.14; ``*_norm.scale`` -> ``*_norm.weight`` after).
    """
    processed = model.model_config.process_unet_state_dict(dict(state_dict))
    model.diffusion_model.load_state_dict(processed, strict=True)


_RMS_NORM_KEYS = ("query_norm.weight", "key_norm.weight")


def canonical_flux_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusion-model state dict in the BFL file layout every supported ComfyUI reads.

    From 0.14 on the q/k norms are ``RMSNorm`` modules named ``*.weight`` in memory; files keep
    ``*.scale`` (what 0.3.x modules are called and what 0.14+ renames on load).
    """
    out = {}
    for key, value in state_dict.items():
        if key.endswith(_RMS_NORM_KEYS):
            key = key[: -len("weight")] + "scale"
        out[key] = value
    return out


@contextlib.contextmanager
def trainable(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` with every parameter requiring grad (0.30+ freezes a diffusion model when built)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(True)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# --------------------------------------------------------------------------- differentiable calls

@contextlib.contextmanager
def training_mode(force_rope_swap: bool = False) -> Iterator[None]:
    """Make ComfyUI's Flux differentiable through its custom ops for the duration of a model call.

    * 0.14+: sets ``comfy.model_management.in_training`` (ComfyUI itself then uses its pure-torch RoPE
      and autograd-friendly ops) and restores it.
    * 0.8-0.13: the flag does not exist but Flux RoPE already runs through a ``comfy_kitchen`` op without
      an autograd formula, so ComfyUI's own pure-torch ``_apply_rope``/``_apply_rope1`` are swapped in
      (see :func:`torch_rope`).
    * before 0.8: RoPE is plain torch; nothing to do.

    ``force_rope_swap`` takes the 0.8-0.13 path on any version that has the pure-torch functions
    (tests use it to check that path on a newer ComfyUI).
    """
    import comfy.model_management as mm

    has_flag = hasattr(mm, "in_training")
    with contextlib.ExitStack() as stack:
        if force_rope_swap or not has_flag:
            stack.enter_context(torch_rope())
        if has_flag:
            previous = mm.in_training
            mm.in_training = not force_rope_swap
            stack.callback(setattr, mm, "in_training", previous)
        yield


@contextlib.contextmanager
def torch_rope() -> Iterator[bool]:
    """Route Flux attention's RoPE through ComfyUI's pure-torch functions; yields whether anything changed.

    Flux attention looks ``apply_rope`` up in ``comfy.ldm.flux.math`` at call time, so swapping the
    module attributes reaches it. Nothing changes where the module has no private torch version (then
    ``apply_rope`` is the torch version itself).
    """
    import comfy.ldm.flux.math as flux_math

    swaps = {name: getattr(flux_math, "_" + name) for name in ("apply_rope", "apply_rope1")
             if hasattr(flux_math, name) and hasattr(flux_math, "_" + name)}
    previous = {name: getattr(flux_math, name) for name in swaps}
    for name, fn in swaps.items():
        setattr(flux_math, name, fn)
    try:
        yield bool(swaps)
    finally:
        for name, fn in previous.items():
            setattr(flux_math, name, fn)


def static_weights_clone(model_patcher):
    """A clone of ``model_patcher`` whose layers compute with their stored (patched) weights.

    Dynamic VRAM (comfy-aimdo; ComfyUI 0.12+ with NVIDIA GPUs, ``ModelPatcherDynamic``) streams each
    layer's weights through a virtual VRAM buffer and applies LoRA patches while casting; a layer that
    stays resident reuses the copy an earlier call made (possibly under the executor's inference mode),
    and an evicted region is overwritten in place through a different tensor, out of autograd's sight.
    A backward through such a forward is not safe, so training uses ComfyUI's own non-dynamic delegate
    (``clone(disable_dynamic=True)``, what ComfyUI offers for code that needs ordinary weights): other
    LoRAs are then patched into the weights before the forward, as on every other device and version.
    Elsewhere (CPU, older ComfyUI) this is a plain ``clone()``.
    """
    is_dynamic = getattr(model_patcher, "is_dynamic", None)
    if is_dynamic is None or not is_dynamic():
        return model_patcher.clone()
    try:
        delegate = getattr(model_patcher, "get_non_dynamic_delegate", None)  # caches the delegate's weights
        return delegate() if delegate is not None else model_patcher.clone(disable_dynamic=True)
    except RuntimeError as exc:  # a model no loader made: ComfyUI cannot rebuild it without dynamic VRAM
        raise RuntimeError(f"this model runs with ComfyUI's dynamic VRAM, which training cannot use, and ComfyUI "
                           f"cannot make a non-dynamic copy of it ({exc}); restart ComfyUI with "
                           "--disable-dynamic-vram to train") from exc


# --------------------------------------------------------------------------- LoRA files

def apply_lora(model_patcher, lora_sd: Mapping[str, torch.Tensor], strength: float = 1.0):
    """A clone of ``model_patcher`` with the LoRA patched in, as ``LoraLoaderModelOnly`` does it."""
    import comfy.sd

    patched, _ = comfy.sd.load_lora_for_models(model_patcher, None, dict(lora_sd), strength, 0)
    return patched
