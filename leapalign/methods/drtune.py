"""DRTune baseline: gradient through the chain with stop-gradient on every network input.

With ``x_{i+1} = x_i + (s_{i+1} - s_i) v(sg(x_i), s_i)`` the gradient of x_N is the sum of the trained
steps' direct terms, so it is computed as ``x_N + sum_i (s_{i+1} - s_i) (v_i - sg(v_i))`` over the
trained steps: forward value exactly the rollout's x_N, no nested Jacobians, one graph per trained step.

Early stop (the released comparison code, ``MethodConfig.drtune_early_stop = 0.4``): the chain stops
at a grid point e drawn uniformly from the last 40 % of the grid points, and the reward scores e's
one-step prediction ``x_e - s_e sg(v(x_e, s_e))``; the K trained steps are spaced over steps 0..e-1.
The prediction's velocity carries no gradient (its input is stop-gradient like every other, and
training it would add a fourth trained evaluation). ``drtune_early_stop = 0`` scores the real x_N.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import MethodConfig
from ..leap import hinge_loss
from ..types import LossResult
from .base import (
    Method,
    Plan,
    call_velocity,
    decode_and_score,
    randint,
    require_autograd,
    resolve_lambda,
    reward_metrics,
)


def trained_steps(steps: int, count: int, generator: torch.Generator | None) -> list[int]:
    """``count`` steps evenly spaced by ``N // count`` from a random offset in ``[0, stride)``."""
    count = min(count, steps)
    stride = steps // count
    offset = randint(0, stride - 1, generator)
    return [offset + stride * m for m in range(count)]


def early_stop_point(steps: int, fraction: float, generator: torch.Generator | None) -> int:
    """A grid point uniform over the last ``fraction`` of the points 1..N-1 (``fraction = 0``: N, no stop)."""
    if fraction <= 0 or steps < 2:
        return steps
    low = max(1, steps - math.ceil(fraction * steps - 1e-9))
    return randint(low, steps - 1, generator)


class DRTune(Method):
    name = "drtune"

    def plan(self, config: MethodConfig, sigmas: Tensor, generator: torch.Generator | None) -> Plan:
        steps = int(sigmas.numel()) - 1
        stop = early_stop_point(steps, float(config.drtune_early_stop), generator)
        trained = trained_steps(stop, int(config.drtune_steps), generator)
        return Plan(stop=stop, keep=set(trained) | {stop}, info={"trained": trained, "stop": stop})

    def loss(self, config, velocity, decoder, reward, rollout, prompts, plan) -> LossResult:
        require_autograd()
        lam = resolve_lambda(config, reward)
        sigmas = rollout.sigmas
        trained = plan.info["trained"]
        x_final = rollout.final.detach()
        stop = rollout.stop
        if stop < rollout.steps:  # early stop: one-step prediction of x_0 from x_e, no grad
            with torch.no_grad():
                v_e = call_velocity(velocity, x_final, sigmas[stop], config)
            x_final = x_final - sigmas[stop] * v_e.to(x_final.dtype)
        with torch.enable_grad():
            for i in trained:
                v = call_velocity(velocity, rollout[i].detach(), sigmas[i], config,
                                  use_checkpoint=config.gradient_checkpointing)
                v = v.to(x_final.dtype)
                x_final = x_final + (v - v.detach()) * (sigmas[i + 1] - sigmas[i])
            scores = decode_and_score(decoder, reward, x_final, prompts)
            loss = hinge_loss(scores, None, lam)
        metrics = reward_metrics(self.name, loss, scores, lam, len(trained))
        metrics.update({"trained_steps": list(trained), "stop": stop})
        return LossResult(loss=loss, metrics=metrics)
