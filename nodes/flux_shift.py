"""The training grid on Flux's resolution-shifted schedule, as stock ``ModelSamplingFlux`` builds it.

Flux.1 shifts its sigma schedule by image size (``mu`` from 0.5 at 256 tokens to 1.15 at 4096, the
``ModelSamplingFlux`` node); a model loaded without that node keeps ``mu = 1.15`` whatever the size.
The released LeapAlign code samples its training rollouts on the shifted grid (``mu`` about 0.80 at
720x720), so the training node does the same by default instead of relying on the graph:

* ``auto`` (default): a MODEL that already carries a sampling patch (``ModelSamplingFlux`` or
  ``ModelSamplingSD3`` upstream) is used as it is; otherwise the node applies the shift for the
  training width x height itself.
* ``resolution``: always the shift for the training size (overrides an upstream patch).
* ``model``: the MODEL's own schedule, untouched (the project's behaviour before the shift).

The shift is applied the way ``ModelSamplingFlux`` applies it (an object patch on a clone), and the
training node outputs its trained model on that clone, so a sampler downstream uses the grid the LoRA
was trained on. For Flux the velocity does not depend on the shift (its timestep is the sigma), only
the grid does.
"""

from __future__ import annotations

SHIFT_MODES = ("auto", "resolution", "model")
MAX_SHIFT = 1.15
BASE_SHIFT = 0.5


def resolution_mu(width: int, height: int, max_shift: float = MAX_SHIFT, base_shift: float = BASE_SHIFT) -> float:
    """``ModelSamplingFlux``'s ``mu``: linear in the number of 2x2 latent patches (256 -> base, 4096 -> max)."""
    slope = (max_shift - base_shift) / (4096 - 256)
    return width * height / (8 * 8 * 2 * 2) * slope + base_shift - slope * 256


def has_sampling_patch(model) -> bool:
    return "model_sampling" in getattr(model, "object_patches", {})


def with_resolution_shift(model, width: int, height: int, steps: int | None = None):
    """A clone of ``model`` sampling on the Flux schedule shifted for ``width`` x ``height`` (any ``steps``)."""
    return with_flux_shift(model, resolution_mu(width, height))


def with_flux_shift(model, mu: float):
    """A clone of ``model`` whose sampling is ``ModelSamplingFlux`` with shift ``mu`` (what that node patches)."""
    import comfy.model_sampling

    class ResolutionShiftedFlux(comfy.model_sampling.ModelSamplingFlux, comfy.model_sampling.CONST):
        pass

    sampling = ResolutionShiftedFlux(model.model.model_config)
    sampling.set_parameters(shift=mu)
    shifted = model.clone()
    shifted.add_object_patch("model_sampling", sampling)
    return shifted


def training_model(model, mode: str, width: int, height: int, schedule=with_resolution_shift,
                   steps: int | None = None):
    """The model whose schedule the training rollouts use (see the module docstring for ``mode``).

    ``schedule`` is the model family's ``resolution_schedule`` (called with the rollout's ``steps``);
    None (a family whose schedule does not depend on the size) keeps the model as loaded whatever the mode."""
    if mode not in SHIFT_MODES:
        raise ValueError(f"sigma_shift must be one of {', '.join(SHIFT_MODES)}, got {mode!r}")
    if schedule is None or mode == "model" or (mode == "auto" and has_sampling_patch(model)):
        return model
    return schedule(model, width, height, steps)


def schedule_mu(model) -> float | None:
    """The ``mu`` (ComfyUI's ``shift``) of a Flux model's sampling object, for the run's metadata."""
    sampling = model.get_model_object("model_sampling")
    shift = getattr(sampling, "shift", None)
    return None if shift is None else float(shift)
