"""A toy evaluation world for tests/unit/test_evaluation.py: two MLP velocities (base and a 'LoRA'),
a sigmoid decoder to 4x4 pictures, two built-in rewards; ``main`` runs it (also as a subprocess)."""

from __future__ import annotations

import sys
import time

import torch
from leap_toys import MLPVelocity

from leapalign.evaluation import EvalPlan, EvalStore, flow_sampler, metrics_for, run_evaluation
from leapalign.rewards import BrightnessReward, ColorTargetReward
from leapalign.sigmas import flow_sigmas

SHAPE = (3 * 4 * 4,)
PROMPTS = ["a red apple", "a blue car", "a green tree", "a yellow sun", "a white cat"]


def plan() -> EvalPlan:
    return EvalPlan(prompts=list(PROMPTS), variants=["base", "lora"], images_per_prompt=3, seed=11,
                    settings={"steps": 4})


def sampler(delay: float = 0.0):
    models = {"base": MLPVelocity(SHAPE[0], seed=1), "lora": MLPVelocity(SHAPE[0], seed=2)}

    def velocities(variant, prompt):
        shift = 0.05 * (len(prompt) % 5)

        def velocity(x, sigma):
            if delay:
                time.sleep(delay)
            return models[variant](x, sigma) - shift
        return velocity

    def decode(latent):
        return torch.sigmoid(latent).view(-1, 3, 4, 4)

    return flow_sampler(velocities, decode, flow_sigmas(4, shift=1.0), SHAPE)


def metrics():
    return metrics_for([BrightnessReward(), ColorTargetReward(target=(1.0, 0.0, 0.0))])


def main(folder: str, delay: float) -> None:
    torch.set_num_threads(1)
    run_evaluation(plan(), sampler(delay), metrics(), EvalStore(folder).open(plan().record()))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
