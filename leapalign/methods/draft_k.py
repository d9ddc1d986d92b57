"""DRaFT-K baseline: back-propagate through the last K Euler steps of the real chain."""

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
    require_autograd,
    resolve_lambda,
    reward_metrics,
)


def grad_euler_steps(velocity, x: Tensor, sigmas: Tensor, start: int, config: MethodConfig) -> Tensor:
    """Euler steps ``start..N-1`` with grad, each velocity call checkpointed if configured."""
    for i in range(start, int(sigmas.numel()) - 1):
        v = call_velocity(velocity, x, sigmas[i], config, use_checkpoint=config.gradient_checkpointing)
        x = x + v.to(x.dtype) * (sigmas[i + 1] - sigmas[i])
    return x


class DraftK(Method):
    """No-grad rollout to grid point ``N - K``, then K differentiable steps; reward on the chain's x_N."""

    name = "draft_k"

    def chain_length(self, config: MethodConfig, steps: int) -> int:
        return min(int(config.draft_k), steps)

    def plan(self, config: MethodConfig, sigmas: Tensor, generator: torch.Generator | None) -> Plan:
        steps = int(sigmas.numel()) - 1
        start = steps - self.chain_length(config, steps)
        return Plan(stop=start, keep={start}, info={"start": start})

    def loss(self, config, velocity, decoder, reward, rollout, prompts, plan) -> LossResult:
        require_autograd()
        lam = resolve_lambda(config, reward)
        start = plan.info["start"]
        with torch.enable_grad():
            x_final = grad_euler_steps(velocity, rollout.final.detach(), rollout.sigmas, start, config)
            scores = decode_and_score(decoder, reward, x_final, prompts)
            loss = hinge_loss(scores, None, lam)
        steps = rollout.steps
        metrics = reward_metrics(self.name, loss, scores, lam, steps - start)
        metrics.update({"K": steps - start})
        return LossResult(loss=loss, metrics=metrics)
