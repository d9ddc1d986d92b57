"""Bad input gets a ValueError that names the bad thing."""

import pytest
import torch
from leap_toys import LinearReward, MLPVelocity, sigmoid_decoder

from leapalign.config import MethodConfig, OptimConfig, TrainConfig
from leapalign.leap import hinge_loss, trajectory_weight, two_step_leap
from leapalign.methods import compute_loss, leap_loss_from_rollout
from leapalign.rollout import capture_rollout
from leapalign.sigmas import flow_sigmas

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 6


def call(cfg=None, sigmas=None, reward=None, decoder=sigmoid_decoder, prompts=("a", "b")):
    cfg = cfg or MethodConfig(hinge_lambda=1.0)
    sigmas = flow_sigmas(4) if sigmas is None else sigmas
    return compute_loss(cfg, MLPVelocity(DIM), decoder, reward or LinearReward(1.0), torch.randn(2, DIM), sigmas,
                        list(prompts), torch.Generator().manual_seed(0))


def test_non_decreasing_sigmas():
    with pytest.raises(ValueError, match="strictly decreasing"):
        call(sigmas=torch.tensor([1.0, 0.6, 0.7, 0.0]))


def test_too_few_steps():
    with pytest.raises(ValueError, match="N >= 1"):
        call(sigmas=torch.tensor([0.0]))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        flow_sigmas(0)


def test_k_not_below_j():
    with pytest.raises(ValueError, match="k < j"):
        MethodConfig(k=3, j=3)
    rollout = capture_rollout(MLPVelocity(DIM), torch.randn(2, DIM), flow_sigmas(6))
    with pytest.raises(ValueError, match="k < j"):
        leap_loss_from_rollout(MethodConfig(hinge_lambda=1.0), MLPVelocity(DIM), sigmoid_decoder, LinearReward(1.0),
                               rollout, ["a", "b"], k=4, j=2)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_out_of_range(alpha):
    with pytest.raises(ValueError, match="alpha"):
        MethodConfig(alpha=alpha)
    x = torch.randn(2, DIM)
    with pytest.raises(ValueError, match="alpha"):
        two_step_leap(MLPVelocity(DIM), x, x, x, 0.9, 0.5, alpha=alpha)


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_tau_not_positive(tau):
    with pytest.raises(ValueError, match="tau"):
        MethodConfig(tau=tau)
    with pytest.raises(ValueError, match="tau"):
        trajectory_weight(torch.ones(2), torch.ones(2), tau=tau)


def test_reward_wrong_shape():
    def per_pixel(images, prompts):
        return images.mean(dim=1)

    with pytest.raises(ValueError, match=r"one score per image, shape \[2\]"):
        call(reward=per_pixel)
    with pytest.raises(ValueError, match="shape"):
        hinge_loss(torch.ones(2, 1), None, 1.0)


def test_reward_without_gradient():
    def detached(images, prompts):
        return images.mean(dim=(1, 2, 3)).detach()

    with pytest.raises(ValueError, match="no gradient"):
        call(reward=detached)


def test_reward_returning_a_list():
    with pytest.raises(ValueError, match="must return a tensor"):
        call(reward=lambda images, prompts: [0.0, 0.0])


def test_decoder_without_gradient():
    def no_grad_decoder(x):
        with torch.no_grad():
            return sigmoid_decoder(x)

    with pytest.raises(ValueError, match="decoder"):
        call(decoder=no_grad_decoder)


def test_prompt_count_mismatch_and_missing_lambda():
    with pytest.raises(ValueError, match="prompts"):
        call(prompts=("only one",))
    with pytest.raises(ValueError, match="hinge lambda"):
        call(cfg=MethodConfig(), reward=lambda images, prompts: images.mean(dim=(1, 2, 3)))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown method"):
        MethodConfig(name="ppo")
    with pytest.raises(ValueError, match="lr"):
        OptimConfig(lr=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        TrainConfig(checkpoint_every=5)
    with pytest.raises(ValueError, match="unknown dtype"):
        MethodConfig(rollout_dtype="fp12")


def test_inference_mode_is_refused_with_advice():
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        call()
