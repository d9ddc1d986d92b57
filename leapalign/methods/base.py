"""What every method shares: the plan/loss interface, reward scoring with input checks, velocity calls.

A method runs in two phases so graph nodes can split them: ``plan`` decides before the rollout
which grid points matter (so the no-grad rollout keeps only those), and ``loss`` computes the
differentiable part from the captured :class:`~leapalign.rollout.Rollout`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..config import MethodConfig
from ..rollout import Rollout, sigma_batch
from ..types import DecoderFn, LossResult, RewardFn, VelocityFn


@dataclass
class Plan:
    """Decided before the rollout: integrate up to ``stop`` and keep the latents at ``keep``."""

    stop: int
    keep: set[int]
    pair: tuple[int, int] | None = None
    info: dict = field(default_factory=dict)


class Method:
    """Base class: subclasses set ``name`` and implement :meth:`plan` and :meth:`loss`."""

    name: str = ""

    def plan(self, config: MethodConfig, sigmas: Tensor, generator: torch.Generator | None) -> Plan:
        raise NotImplementedError

    def loss(self, config: MethodConfig, velocity: VelocityFn, decoder: DecoderFn, reward: RewardFn,
             rollout: Rollout, prompts: Sequence[str], plan: Plan) -> LossResult:
        raise NotImplementedError


def randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]`` (inclusive) from ``generator``."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def resolve_lambda(config: MethodConfig, reward: RewardFn) -> float:
    """The hinge threshold: the config's, else the reward's ``default_lambda``."""
    lam = config.hinge_lambda
    if lam is None:
        lam = getattr(reward, "default_lambda", None)
    if lam is None:
        raise ValueError("no hinge lambda: set MethodConfig.hinge_lambda or give the reward a "
                         "'default_lambda' attribute (on the reward's own scale, e.g. HPSv2.1 0.55)")
    return float(lam)


def require_autograd() -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError("the loss is being computed under torch.inference_mode(); leave it with "
                           "torch.inference_mode(False) and torch.enable_grad() (nodes.autograd_seam.autograd_enabled)")


def decode_and_score(decoder: DecoderFn, reward: RewardFn, latents: Tensor, prompts: Sequence[str]) -> Tensor:
    """Decode ``latents`` and score them, checking that the result is ``[B]`` and keeps the graph."""
    batch = latents.shape[0]
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompts for a batch of {batch} latents")
    images = decoder(latents)
    if latents.requires_grad and not (isinstance(images, Tensor) and images.requires_grad):
        raise ValueError("the decoder returned images without a gradient; it must not run under torch.no_grad() "
                         "or inference mode, and must not detach its output")
    scores = reward(images, list(prompts))
    if not isinstance(scores, Tensor):
        raise ValueError(f"the reward must return a tensor of shape [{batch}], got {type(scores).__name__}")
    if tuple(scores.shape) != (batch,):
        raise ValueError(f"the reward must return one score per image, shape [{batch}], got {tuple(scores.shape)}")
    if images.requires_grad and not scores.requires_grad:
        raise ValueError("the reward returned scores with no gradient (requires_grad=False); LeapAlign needs a "
                         "differentiable reward: do not detach, use .item(), or run it under torch.no_grad()")
    return scores


def call_velocity(velocity: VelocityFn, x: Tensor, sigma: Tensor, config: MethodConfig,
                  use_checkpoint: bool = False) -> Tensor:
    """One velocity call with grad, optionally gradient-checkpointed, with ``config.checkpoint_context`` active.

    The context is entered *inside* the checkpointed function so it is active again on recompute.
    """
    ctx = config.checkpoint_context or contextlib.nullcontext
    sig = sigma_batch(sigma, x.shape[0])

    def run(x_in: Tensor, s_in: Tensor) -> Tensor:
        with ctx():
            return velocity(x_in, s_in)

    if use_checkpoint:
        return checkpoint(run, x, sig, use_reentrant=False)
    return run(x, sig)


def reward_metrics(method: str, loss: Tensor, scores: Tensor, lam: float, evaluations: int) -> dict:
    detached = scores.detach().float()
    return {
        "method": method,
        "loss": float(loss.detach()),
        "reward": float(detached.mean()),
        "rewards": detached.tolist(),
        "hinge_lambda": lam,
        "hinge_active": float((detached < lam).float().mean()),
        "velocity_evals": evaluations,
    }
