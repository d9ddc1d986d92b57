"""DRaFT-LV baseline: K = 1 plus n re-noised copies of the final sample, one-step predictions each."""

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
from .draft_k import grad_euler_steps


class DraftLV(Method):
    """Copies ``x_t = (1 - t) sg(x_0) + t eps`` at a small ``t`` and predictions ``x_t - t v(x_t, t)``.

    ``t`` is ``MethodConfig.draft_lv_sigma`` or the last non-zero grid sigma. The loss averages the
    hinge over the ``n`` copies and, with ``draft_lv_include_last``, the K = 1 term on the real chain.
    The copies' noise comes from a seed drawn from the method generator (shared by all ranks, so
    unlike the initial noise it is not keyed by global sample index).
    """

    name = "draft_lv"

    def plan(self, config: MethodConfig, sigmas: Tensor, generator: torch.Generator | None) -> Plan:
        steps = int(sigmas.numel()) - 1
        eps_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return Plan(stop=steps - 1, keep={steps - 1}, info={"eps_seed": eps_seed})

    def loss(self, config, velocity, decoder, reward, rollout, prompts, plan) -> LossResult:
        require_autograd()
        lam = resolve_lambda(config, reward)
        steps = rollout.steps
        sigmas = rollout.sigmas
        t = sigmas[steps - 1] if config.draft_lv_sigma is None else torch.tensor(
            float(config.draft_lv_sigma), dtype=sigmas.dtype)
        eps_gen = torch.Generator(device="cpu")
        eps_gen.manual_seed(plan.info["eps_seed"])
        losses, evaluations = [], 0
        with torch.enable_grad():
            x_last = grad_euler_steps(velocity, rollout.final.detach(), sigmas, steps - 1, config)
            evaluations += 1
            last_scores = decode_and_score(decoder, reward, x_last, prompts)
            if config.draft_lv_include_last:
                losses.append(hinge_loss(last_scores, None, lam))
            x_0 = x_last.detach()
            for _ in range(int(config.draft_lv_copies)):
                eps = torch.randn(x_0.shape, generator=eps_gen, dtype=torch.float32).to(x_0)
                x_t = (1 - t) * x_0 + t * eps
                v = call_velocity(velocity, x_t, t, config)
                evaluations += 1
                scores = decode_and_score(decoder, reward, x_t - t * v.to(x_t.dtype), prompts)
                losses.append(hinge_loss(scores, None, lam))
            loss = torch.stack(losses).mean()
        metrics = reward_metrics(self.name, loss, last_scores, lam, evaluations)
        metrics.update({"copies": int(config.draft_lv_copies), "sigma_t": float(t)})
        return LossResult(loss=loss, metrics=metrics)
