"""LeapAlign: a two-step leap x_k -> x_j -> x_0 with reward on the real x_0 (docs/method.md).

``MethodConfig.leap_steps`` selects the paper's one- and three-step ablations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..config import MethodConfig
from ..leap import hinge_loss, three_step_leap, trajectory_weight, two_step_leap
from ..rollout import Rollout
from ..sigmas import check_pair, sample_pair, window_start
from ..types import DecoderFn, LossResult, RewardFn, VelocityFn
from .base import Method, Plan, decode_and_score, require_autograd, resolve_lambda, reward_metrics


class LeapAlign(Method):
    name = "leapalign"

    def plan(self, config: MethodConfig, sigmas: Tensor, generator: torch.Generator | None) -> Plan:
        steps = int(sigmas.numel()) - 1
        if int(config.leap_steps) == 3:
            points = three_points(steps, generator, config)
            return Plan(stop=steps, keep={*points, steps}, pair=points[:2], info={"points": points})
        if int(config.leap_steps) == 1:  # one leap x_k -> x_0; k has the scheme's marginal
            k = config.k if config.k is not None else sample_pair(
                steps, generator, scheme=config.pair_sampling, window=config.pair_window)[0]
            k, j = check_pair(k, steps, steps)  # two_step_leap skips the second call when s_j = 0
        else:
            k, j = sample_pair(steps, generator, config.k, config.j, config.pair_sampling, config.pair_window)
        return Plan(stop=steps, keep={k, j, steps}, pair=(k, j))

    def loss(self, config, velocity, decoder, reward, rollout, prompts, plan) -> LossResult:
        if "points" in plan.info:
            return three_step_loss(config, velocity, decoder, reward, rollout, prompts, plan.info["points"])
        return leap_loss_from_rollout(config, velocity, decoder, reward, rollout, prompts, *plan.pair)


def three_points(steps: int, generator: torch.Generator | None, config: MethodConfig) -> tuple[int, int, int]:
    """Three distinct evaluation steps (released-style: a permutation's first three, sorted)."""
    if config.pair_sampling != "released" or config.k is not None or config.j is not None:
        raise ValueError("a three-step leap draws its points like the released code: use "
                         "pair_sampling='released' and leave k and j unset")
    low = window_start(steps, config.pair_window)
    if steps - low < 3:
        raise ValueError(f"a three-step leap needs 3 evaluation steps in its window, N = {steps} has {steps - low}")
    picked = sorted((low + torch.randperm(steps - low, generator=generator)[:3]).tolist())
    return picked[0], picked[1], picked[2]


def three_step_loss(config: MethodConfig, velocity: VelocityFn, decoder: DecoderFn, reward: RewardFn,
                    rollout: Rollout, prompts: Sequence[str], points: Sequence[int]) -> LossResult:
    """The three-step ablation's loss: same weight, hinge and reward on the real x_0 as two steps."""
    require_autograd()
    k, j, m = points
    lam = resolve_lambda(config, reward)
    sigmas = rollout.sigmas
    with torch.enable_grad():
        leap = three_step_leap(velocity, rollout[k], rollout[j], rollout[m], rollout.final, sigmas[k], sigmas[j],
                               sigmas[m], alpha=config.alpha, call_context=config.checkpoint_context)
        weight = trajectory_weight(leap.d_j, leap.d_0, config.tau, config.weighting)
        scores = decode_and_score(decoder, reward, leap.x0, prompts)
        loss = hinge_loss(scores, weight, lam)
    metrics = reward_metrics("leapalign", loss, scores, lam, leap.evaluations)
    metrics.update({"k": k, "j": j, "m": m, "weights": weight.tolist(), "alpha": float(config.alpha)})
    return LossResult(loss=loss, metrics=metrics)


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
