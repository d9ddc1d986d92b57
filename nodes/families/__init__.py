"""Model families: everything that differs between the flow-matching models the pack trains.

One module per family (``flux.py``, ``sd3.py``, ``flux2.py``, ``chroma.py``, ``qwen_image.py``,
``lumina2.py`` for Lumina 2 and Z-Image, ``hidream.py``) builds one :class:`ModelFamily`; :func:`family_of`
picks the family of a loaded ComfyUI MODEL from its ``comfy.model_base`` class. The rest of the pack
(adapters, nodes) asks the family and never names one; the core (``leapalign/``) receives plain data
and callables (target patterns, an export function). What a family states:

* ``model_classes``: the ``comfy.model_base`` classes it handles, matched by exact class, so a
  subclass that ComfyUI derives for another model (Chroma and Flux.2 subclass Flux) is not taken for
  its parent;
* ``lora_presets``: LoRA target patterns (regular expressions over the diffusion model's module
  paths) per preset name, and ``export_lora``: how a trained adapter is written so that ComfyUI's
  stock LoRA loader (and, where it has one, diffusers' loader of that family) reads every tensor;
* ``conditioning_extras`` and ``stack_context``: what a prompt batch carries besides the text
  encoder's output (Flux's guidance; SD3 needs nothing beyond the pooled output the encoder gives) and
  how prompts of one batch are stacked;
* ``seam``: what makes a differentiable call through ComfyUI's blocks exact (see ``autograd_seam``),
  and ``wrapper``: which of ComfyUI's model wrappers the seam and the LoRA hooks ride on. ComfyUI
  runs ``DIFFUSION_MODEL`` wrappers only where a model's own ``forward`` calls them (Flux does; the
  MMDiT of SD3 does not, in 0.3.75 and 0.33), while every model runs ``APPLY_MODEL`` wrappers
  (``BaseModel.apply_model``: input scaling, diffusion model, denoised output; no in-place writes);
* ``size_multiple``: image sizes the latent patching accepts.

Reading a velocity is the same for every family here: ComfyUI's own sampler machinery gives the
denoised estimate and ``v = (x - denoised) / sigma`` (``adapters.sample_with``); latent format and
VAE scaling come from the model's ``latent_format`` through ``process_latent_out``. Both only hold for
flow-matching (``CONST``) model sampling, which :func:`family_of` checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


class UnknownModelFamily(ValueError):
    """The MODEL is of a family the pack does not know."""


def default_seam():
    """Out-of-place residual adds plus ComfyUI's training switches, active around one model call."""
    from ..autograd_seam import OutOfPlaceAdds
    from ..comfy_compat import training_mode

    stack = contextlib.ExitStack()
    stack.enter_context(OutOfPlaceAdds())
    stack.enter_context(training_mode())
    return stack


def per_module_export(prefix: str, family: str, roots: tuple[str, ...] = (), presets=()) -> Callable:
    """An exporter writing ``<prefix><module path>.lora_A/lora_B.weight`` with the scale folded into
    ``lora_B`` (no alpha key): the layout both ComfyUI and diffusers read for families whose module paths
    already are diffusers' names (Qwen-Image, HiDream) or that ComfyUI reads natively (Flux.2). With
    ``roots``, a target outside those module trees is refused: no loader would map it."""

    def export(lora, weights, model) -> dict:
        from ...leapalign.lora import LoRAError

        sd = {}
        for path, (down, up) in lora.factors(weights).items():
            if roots and not path.startswith(roots):
                raise LoRAError(f"LoRA target {path} is outside {family}'s transformer blocks; train a preset of "
                                f"{sorted(presets)} instead of custom targets")
            sd[f"{prefix}{path}.lora_A.weight"] = down.clone().contiguous()
            sd[f"{prefix}{path}.lora_B.weight"] = up.clone().contiguous()
        return sd

    return export


def pad_free_stack(family: str) -> Callable[[Sequence[torch.Tensor]], torch.Tensor]:
    """Stack prompt encodings that must have equal token counts (joint attention: repeating tokens
    would change every attention weight, so ComfyUI's cross-attention LCM repeat is wrong here)."""

    def stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        lengths = sorted({int(t.shape[1]) for t in tensors})
        if len(lengths) > 1:
            raise ValueError(f"prompts of one batch encode to different token counts {lengths}, which {family} "
                             "cannot batch; shorten the long prompts or use batch_size 1")
        return torch.cat(list(tensors))

    return stack


@dataclass(frozen=True)
class ModelFamily:
    name: str
    """kohya's ``ss_base_model_version`` word, also in the LoRA metadata (``flux1``, ``sd3``)."""
    short: str
    display: str
    model_classes: tuple[str, ...]
    lora_presets: Mapping[str, tuple[str, ...]]
    export_lora: Callable[[Any, Mapping[str, torch.Tensor] | None, Any], dict[str, torch.Tensor]]
    """``(adapter, weights or None, model patcher) -> state dict`` of the LoRA file."""
    conditioning_extras: Callable[[float], dict] = field(default=lambda guidance: {})
    encoder_extras: tuple[str, ...] = ()
    """Tensors the text encoder returns besides its sequence and pooled output that the model reads
    (HiDream's ``conditioning_llama3``); prompts of a batch are stacked on their first axis."""
    stack_context: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None = None
    seam: Callable[[], contextlib.AbstractContextManager] = default_seam
    wrapper: str = "DIFFUSION_MODEL"
    """``comfy.patcher_extension.WrappersMP`` member the training wrapper is registered as."""
    size_multiple: int = 16
    resolution_schedule: Callable[[Any, int, int, int], Any] | None = None
    """``(model, width, height, steps) -> model`` on the family's schedule for that size and step count
    (Flux's resolution shift ignores ``steps``; Flux.2's empirical shift uses it); None: the family
    samples on its model's own schedule at every size (SD3's fixed shift)."""
    latent_downscale: int = 8
    """Pixels per latent cell (Flux.2's VAE packs 2x2 patches: 16)."""
    memory_plan: bool = False
    """Whether the measured memory plan and its presets (block checkpointing, offloading) apply."""
    loaders: str = "UNETLoader or CheckpointLoaderSimple"

    def targets(self, preset: str) -> tuple[str, ...]:
        if preset not in self.lora_presets:
            raise ValueError(f"LoRA target preset {preset!r} is not defined for {self.display}; "
                             f"choose one of {sorted(self.lora_presets)}")
        return self.lora_presets[preset]

    def check_size(self, width: int, height: int) -> None:
        m = self.size_multiple
        if width % m or height % m:
            raise ValueError(f"width and height must be multiples of {m} for {self.short}, got {width}x{height}")

    def describe(self) -> str:
        return f"{self.display} (comfy.model_base.{'/'.join(self.model_classes)})"


def known_families() -> tuple[ModelFamily, ...]:
    from . import chroma, flux, flux2, hidream, lumina2, qwen_image, sd3

    return (flux.FAMILY, sd3.FAMILY, flux2.FAMILY, chroma.FAMILY, qwen_image.FAMILY, lumina2.FAMILY, hidream.FAMILY)


def preset_names() -> list[str]:
    """Every preset name any family offers, in first-seen order (the training node's choices)."""
    names: list[str] = []
    for family in known_families():
        names += [n for n in family.lora_presets if n not in names]
    return names


def family_of(model) -> ModelFamily:
    """The family of a ComfyUI MODEL (``ModelPatcher``), or :class:`UnknownModelFamily` naming the known ones."""
    import comfy.model_base

    inner = getattr(model, "model", None)
    families = known_families()
    for family in families:
        classes = tuple(getattr(comfy.model_base, c) for c in family.model_classes if hasattr(comfy.model_base, c))
        if inner is not None and type(inner) in classes:
            _require_flow_matching(model, family)
            return family
    kind = type(inner).__name__ if inner is not None else type(model).__name__
    first, others = families[0].short, ", ".join(f.short for f in families[1:])
    known = "; ".join(f.describe() for f in families)
    raise UnknownModelFamily(f"the model is a {kind}, not a {first} model nor {others}; LeapAlign trains these "
                             f"families: {known}. Load one with {families[0].loaders}")


def _require_flow_matching(model, family: ModelFamily) -> None:
    """The sampling the sampler will use (a ``ModelSampling*`` node may have patched it) must be CONST."""
    import comfy.model_sampling

    get = getattr(model, "get_model_object", None)
    sampling = get("model_sampling") if get is not None else getattr(model.model, "model_sampling", None)
    if sampling is not None and not isinstance(sampling, comfy.model_sampling.CONST):
        bases = [b.__name__ for b in type(sampling).__mro__[1:] if b.__module__ == comfy.model_sampling.__name__]
        raise UnknownModelFamily(f"this {family.display} model samples with {type(sampling).__name__} "
                                 f"({', '.join(bases)}), not flow matching (CONST); LeapAlign's leap needs a "
                                 "flow-matching model (remove the ModelSampling node that changed it)")
