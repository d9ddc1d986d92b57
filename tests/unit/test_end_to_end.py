"""Toy end to end: 50 LeapAlign steps on a small MLP velocity raise a differentiable reward."""

import pytest
import torch
from leap_toys import MLPVelocity, brightness_reward, sigmoid_decoder

from leapalign.config import MethodConfig, OptimConfig, TrainConfig
from leapalign.methods import compute_loss
from leapalign.noise import per_sample_noise
from leapalign.rollout import capture_rollout
from leapalign.sigmas import flow_sigmas
from leapalign.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
DIM = 8


def held_out_reward(model, sigmas) -> float:
    noise = per_sample_noise((DIM,), seed=987654, step=0, indices=range(256))
    final = capture_rollout(model, noise, sigmas, keep=[]).final
    with torch.no_grad():
        return float(brightness_reward(sigmoid_decoder(final), None).mean())


def test_fifty_leapalign_steps_raise_held_out_reward():
    model = MLPVelocity(DIM, seed=1)
    sigmas = flow_sigmas(8, shift=3.0)
    method = MethodConfig(hinge_lambda=1.0)  # brightness < 1 always: the hinge stays active

    def loss_fn(batch):
        return compute_loss(method, model, sigmoid_decoder, brightness_reward, batch.noise((DIM,)), sigmas,
                            batch.prompts, batch.generator())

    before = held_out_reward(model, sigmas)
    config = TrainConfig(steps=50, batch_size=8, seed=0, optim=OptimConfig(lr=3e-3))
    result = train(dict(model.named_parameters()), loss_fn, ["a", "b", "c"], config)
    after = held_out_reward(model, sigmas)
    assert result.skipped_steps == 0
    assert 0.4 < before < 0.6
    assert after - before > 0.15, (before, after)
