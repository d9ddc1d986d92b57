"""LeapAlign: a two-step leap x_k -> x_j -> x_0 with reward on the real x_0 (METHOD.md)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..config import MethodConfig
from ..leap import hinge_loss, trajectory_weight, two_step_leap
from ..rollout import Rollout
from ..sigmas import check_pair, sample_pair
from ..types import DecoderFn, LossResult, RewardFn, VelocityFn
from .base import Method, Plan, decode_and_score, require_autograd, resolve_lambda, reward_metrics


class LeapAlign(Method):
    name = "leapalign"

    def plan(self, config: MethodConfig, sigmas: Tensor, generator: torch.Generator | None) -> Plan:
        steps = int(sigmas.numel()) - 1
        k, j = sample_pair(steps, generator, config.k, config.j)
        return Plan(stop=steps, keep={k, j, steps}, pair=(k, j))

    def loss(self, config, velocity, decoder, reward, rollout, prompts, plan) -> LossResult:
        return leap_loss_from_rollout(config, velocity, decoder, reward, rollout, prompts, *plan.pair)


def leap_loss_from_rollout(config: MethodConfig, velocity: VelocityFn, decoder: DecoderFn, reward: RewardFn,
                           rollout: Rollout, prompts: Sequence[str], k: int | None = None,
                           j: int | None = None) -> LossResult:
    """The differentiable half of LeapAlign on an already captured rollout.

    (k, j) come from the arguments, else ``rollout.pair``, else ``config.k``/``config.j``. The rollout
    must reach the end of its grid and hold x_k and x_j. Reward and decoder run on ``xtil_0``, whose
    value is exactly the rollout's x_0; the weight uses no grad; the loss is the weighted hinge.
    The leap runs in the rollout latents' dtype (a model adapter casts to its own dtype inside).
    """
    require_autograd()
    steps = rollout.steps
    if rollout.stop != steps:
        raise ValueError(f"LeapAlign needs a rollout to the end of its grid (stop {rollout.stop} != N = {steps})")
    if k is None or j is None:
        pair = rollout.pair or (config.k, config.j)
        k = pair[0] if k is None else k
        j = pair[1] if j is None else j
    if k is None or j is None:
        raise ValueError("no (k, j): pass k and j, capture the rollout with a pair, or set MethodConfig.k/j")
    k, j = check_pair(k, j, steps)
    lam = resolve_lambda(config, reward)
    sigmas = rollout.sigmas
    with torch.enable_grad():
        leap = two_step_leap(velocity, rollout[k], rollout[j], rollout.final, sigmas[k], sigmas[j],
                             alpha=config.alpha, call_context=config.checkpoint_context)
        weight = trajectory_weight(leap.d_j, leap.d_0, config.tau, config.weighting)
        scores = decode_and_score(decoder, reward, leap.x0, prompts)
        loss = hinge_loss(scores, weight, lam)
    metrics = reward_metrics("leapalign", loss, scores, lam, leap.evaluations)
    metrics.update({
        "k": k, "j": j, "sigma_k": float(sigmas[k]), "sigma_j": float(sigmas[j]),
        "d_j": leap.d_j.tolist(), "d_0": leap.d_0.tolist(), "weights": weight.tolist(),
        "alpha": float(config.alpha),
    })
    return LossResult(loss=loss, metrics=metrics)
