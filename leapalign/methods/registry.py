"""Methods by name, and the one call every training path and benchmark uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..config import MethodConfig, resolve_dtype
from ..rollout import Rollout, capture_rollout
from ..sigmas import validate_sigmas
from ..types import DecoderFn, LossResult, RewardFn, VelocityFn
from .base import Method
from .draft_k import DraftK
from .draft_lv import DraftLV
from .drtune import DRTune
from .full_backprop import FullBackprop
from .leapalign import LeapAlign
from .refl import ReFL

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (LeapAlign, ReFL, DraftK, DraftLV, DRTune, FullBackprop)}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]()
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def capture_for_method(config: MethodConfig, velocity: VelocityFn, noise: Tensor, sigmas: Tensor,
                       generator: torch.Generator | None = None, *,
                       step_callback: Callable[[int], None] | None = None) -> Rollout:
    """Plan (e.g. draw (k, j)) and run the no-grad rollout keeping only what ``config.name`` needs.

    The plan travels with the rollout (``rollout.meta["plan"]``, and ``rollout.pair`` for LeapAlign),
    so :func:`loss_from_rollout` can run later, e.g. in a separate graph node.
    """
    config.validate()
    method = get_method(config.name)
    sigmas = validate_sigmas(sigmas)
    plan = method.plan(config, sigmas, generator)
    keep = None if config.keep_trajectory else plan.keep
    rollout = capture_rollout(velocity, noise, sigmas, keep=keep, dtype=resolve_dtype(config.rollout_dtype),
                              stop=plan.stop, step_callback=step_callback)
    rollout.pair = plan.pair
    rollout.meta.update({"plan": plan, "method": config.name})
    return rollout


def loss_from_rollout(config: MethodConfig, velocity: VelocityFn, decoder: DecoderFn, reward: RewardFn,
                      rollout: Rollout, prompts: Sequence[str]) -> LossResult:
    """The differentiable part of ``config.name`` on a rollout from :func:`capture_for_method`."""
    plan = rollout.meta.get("plan")
    if plan is None or rollout.meta.get("method") != config.name:
        raise ValueError(f"this rollout was not captured for method {config.name!r} "
                         f"(captured for {rollout.meta.get('method')!r}); use capture_for_method with the same config")
    if len(prompts) != rollout.batch_size:
        raise ValueError(f"got {len(prompts)} prompts for a rollout of {rollout.batch_size} samples")
    result = get_method(config.name).loss(config, velocity, decoder, reward, rollout, prompts, plan)
    result.metrics["steps"] = rollout.steps
    return result


def compute_loss(config: MethodConfig, velocity: VelocityFn, decoder: DecoderFn, reward: RewardFn, noise: Tensor,
                 sigmas: Tensor, prompts: Sequence[str], generator: torch.Generator | None = None, *,
                 step_callback: Callable[[int], None] | None = None) -> LossResult:
    """No-grad rollout from ``noise`` keeping what ``config.name`` needs, then that method's loss.

    ``generator`` drives the method's randomness ((k, j), ReFL's late point, ...): seed it by
    ``(seed, step)`` (``Batch.generator()``) so all data-parallel ranks draw the same values.
    """
    if len(prompts) != noise.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for noise with batch size {noise.shape[0]}")
    rollout = capture_for_method(config, velocity, noise, sigmas, generator, step_callback=step_callback)
    return loss_from_rollout(config, velocity, decoder, reward, rollout, prompts)
