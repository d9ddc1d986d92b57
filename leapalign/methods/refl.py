"""ReFL baseline: no-grad rollout to a random late grid point a, one step with grad, reward on the prediction."""

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


def late_range(steps: int, fraction: float) -> tuple[int, int]:
    """Grid indices ``[N - ceil(fraction N), N - 1]``: the last ``fraction`` of the starting points.

    The default fraction 0.44 is the released comparison code's range (the last 11 of 25 steps)
    scaled to N; the tolerance keeps ``0.44 * 25`` from rounding up to 12.
    """
    low = max(0, steps - math.ceil(fraction * steps - 1e-9))
    return low, steps - 1


class ReFL(Method):
    """``xhat_0 = x_a - s_a v(x_a, s_a)``, scored as is (the prediction, not the real x_0).

    ``a`` is uniform over the late range (``MethodConfig.refl_late_fraction``), or ``MethodConfig.k``
    when set. The loss is the hinge with weight 1.
    """

    name = "refl"

    def plan(self, config: MethodConfig, sigmas: Tensor, generator: torch.Generator | None) -> Plan:
        steps = int(sigmas.numel()) - 1
        if config.k is not None:
            a = int(config.k)
            if not 0 <= a <= steps - 1:
                raise ValueError(f"ReFL grid point k = {a} is outside 0..{steps - 1}")
        else:
            a = randint(*late_range(steps, config.refl_late_fraction), generator)
        return Plan(stop=a, keep={a}, info={"a": a})

    def loss(self, config, velocity, decoder, reward, rollout, prompts, plan) -> LossResult:
        require_autograd()
        lam = resolve_lambda(config, reward)
        a = plan.info["a"]
        s_a = rollout.sigmas[a]
        x_a = rollout.final.detach()
        with torch.enable_grad():
            v = call_velocity(velocity, x_a, s_a, config)
            xhat_0 = x_a - s_a * v.to(x_a.dtype)
            scores = decode_and_score(decoder, reward, xhat_0, prompts)
            loss = hinge_loss(scores, None, lam)
        metrics = reward_metrics(self.name, loss, scores, lam, 1)
        metrics.update({"a": a, "sigma_a": float(s_a)})
        return LossResult(loss=loss, metrics=metrics)
