"""DRTune baseline: gradient through the chain with stop-gradient on every network input.

With ``x_{i+1} = x_i + (s_{i+1} - s_i) v(sg(x_i), s_i)`` the gradient of x_N is the sum of the trained
steps' direct terms, so it is computed as ``x_N + sum_i (s_{i+1} - s_i) (v_i - sg(v_i))`` over the
trained steps: forward value exactly the rollout's x_N, no nested Jacobians, one graph per trained step.
"""

from __future__ import annotations

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


class DRTune(Method):
    name = "drtune"

    def plan(self, config: MethodConfig, sigmas: Tensor, generator: torch.Generator | None) -> Plan:
        steps = int(sigmas.numel()) - 1
        trained = trained_steps(steps, int(config.drtune_steps), generator)
        return Plan(stop=steps, keep=set(trained) | {steps}, info={"trained": trained})

    def loss(self, config, velocity, decoder, reward, rollout, prompts, plan) -> LossResult:
        require_autograd()
        lam = resolve_lambda(config, reward)
        sigmas = rollout.sigmas
        trained = plan.info["trained"]
        x_final = rollout.final.detach()
        with torch.enable_grad():
            for i in trained:
                v = call_velocity(velocity, rollout[i].detach(), sigmas[i], config,
                                  use_checkpoint=config.gradient_checkpointing)
                v = v.to(x_final.dtype)
                x_final = x_final + (v - v.detach()) * (sigmas[i + 1] - sigmas[i])
            scores = decode_and_score(decoder, reward, x_final, prompts)
            loss = hinge_loss(scores, None, lam)
        metrics = reward_metrics(self.name, loss, scores, lam, len(trained))
        metrics.update({"trained_steps": list(trained)})
        return LossResult(loss=loss, metrics=metrics)
