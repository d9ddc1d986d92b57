"""The two-step leap: exact forward values, hand-derived gradients, weights, hinge, cost in N."""

import pytest
import torch
from leap_toys import (
    CountingVelocity,
    LinearReward,
    LinearVelocity,
    MLPVelocity,
    identity_decoder,
    saved_tensor_bytes,
    sigmoid_decoder,
)

from leapalign.config import MethodConfig
from leapalign.leap import hinge_loss, trajectory_weight, two_step_leap
from leapalign.methods import compute_loss, leap_loss_from_rollout
from leapalign.rollout import capture_rollout
from leapalign.sigmas import flow_sigmas

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 2, 2)
DIM = 12


def linear_setup(steps=6, batch=2):
    torch.manual_seed(3)
    vel = LinearVelocity(DIM)
    g = torch.randn(SHAPE, dtype=torch.float64)
    noise = torch.randn(batch, *SHAPE, dtype=torch.float64)
    sigmas = flow_sigmas(steps, shift=2.0, dtype=torch.float64)
    return vel, g, noise, sigmas


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_connector_forward_values_are_exactly_the_real_latents(dtype):
    vel = MLPVelocity(DIM).to(dtype)
    x_k, x_j, x_0 = (torch.randn(2, DIM, dtype=dtype) for _ in range(3))
    out = two_step_leap(vel, x_k, x_j, x_0, torch.tensor(0.9), torch.tensor(0.4), alpha=0.5)
    assert torch.equal(out.x0, x_0) and torch.equal(out.xtil_j, x_j)
    assert out.x0.requires_grad and out.evaluations == 2


def test_reward_input_is_decoded_real_x0():
    vel = MLPVelocity(DIM)
    reward = LinearReward(torch.randn(3, 2, 2))
    noise = torch.randn(4, DIM)
    sigmas = flow_sigmas(10, shift=3.0)
    cfg = MethodConfig(k=2, j=7)
    result = compute_loss(cfg, vel, sigmoid_decoder, reward, noise, sigmas, ["p"] * 4)
    x0 = capture_rollout(vel, noise, sigmas, keep=[]).final
    assert torch.equal(reward.seen[0], sigmoid_decoder(x0))
    assert result.metrics["rewards"] == pytest.approx(reward(sigmoid_decoder(x0), None).tolist(), abs=0)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_gradient_matches_hand_derivation(alpha):
    vel, g, noise, sigmas = linear_setup()
    k, j = 1, 4
    rollout = capture_rollout(vel, noise, sigmas, keep=[k, j])
    cfg = MethodConfig(alpha=alpha, hinge_lambda=1e6)
    result = leap_loss_from_rollout(cfg, vel, identity_decoder, LinearReward(g), rollout, ["a", "b"], k, j)
    result.loss.backward()

    W = vel.W.detach()
    s_k, s_j = sigmas[k], sigmas[j]
    delta = s_k - s_j
    w = torch.tensor(result.metrics["weights"], dtype=torch.float64)
    batch = noise.shape[0]
    u = -(w[:, None] * g.flatten()[None, :]) / batch           # dL/d xtil_0 per sample
    x_k, x_j = rollout[k].flatten(1), rollout[j].flatten(1)
    first_W = -delta * u.T @ x_k
    second_W = -s_j * u.T @ x_j
    nested_W = alpha * s_j * delta * W.T @ u.T @ x_k
    first_c = -delta * s_k * u.sum(0)
    second_c = -s_j ** 2 * u.sum(0)
    nested_c = alpha * s_j * delta * s_k * W.T @ u.sum(0)
    assert torch.allclose(vel.W.grad, first_W + second_W + nested_W, rtol=1e-10, atol=1e-12)
    assert torch.allclose(vel.c.grad, first_c + second_c + nested_c, rtol=1e-10, atol=1e-12)


def test_alpha_zero_removes_exactly_the_nested_term():
    grads = {}
    for alpha in (0.0, 1.0):
        vel, g, noise, sigmas = linear_setup()
        rollout = capture_rollout(vel, noise, sigmas, keep=[0, 3])
        cfg = MethodConfig(alpha=alpha, hinge_lambda=1e6)
        res = leap_loss_from_rollout(cfg, vel, identity_decoder, LinearReward(g), rollout, ["a", "b"], 0, 3)
        res.loss.backward()
        grads[alpha] = (vel.W.grad.clone(), torch.tensor(res.metrics["weights"], dtype=torch.float64))
    W = vel.W.detach()
    w = grads[1.0][1]
    u = -(w[:, None] * g.flatten()[None, :]) / 2
    s_k, s_j = sigmas[0], sigmas[3]
    nested = s_j * (s_k - s_j) * W.T @ u.T @ rollout[0].flatten(1)
    assert nested.abs().max() > 1e-3
    assert torch.allclose(grads[1.0][0] - grads[0.0][0], nested, rtol=1e-10, atol=1e-12)


def test_hand_computed_distances_and_weights():
    c = torch.tensor([[1.0, -1.0], [0.5, 0.5]])

    def constant_velocity(x, sigma):
        return c.clone()

    x_k = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    x_j = torch.tensor([[0.2, 1.6], [0.0, 1.0]])
    x_0 = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    out = two_step_leap(constant_velocity, x_k, x_j, x_0, 0.8, 0.3)
    # xhat_j = x_k - 0.5 c, xhat_0 = x_j - 0.3 c
    assert torch.allclose(out.xhat_j, torch.tensor([[0.5, 1.5], [-0.25, 1.75]]))
    assert torch.allclose(out.xhat_0, torch.tensor([[-0.1, 1.9], [-0.15, 0.85]]))
    assert torch.allclose(out.d_j, torch.tensor([0.2, 0.5]))
    assert torch.allclose(out.d_0, torch.tensor([0.1, 0.5]))
    assert torch.allclose(trajectory_weight(out.d_j, out.d_0, tau=0.1), torch.tensor([1 / 0.3, 1.0]))
    assert torch.allclose(trajectory_weight(out.d_j, out.d_0, tau=0.25), torch.tensor([2.0, 1.0]))
    assert torch.allclose(trajectory_weight(out.d_j, out.d_0, tau=0.1, weighting="d_j"), torch.tensor([5.0, 2.0]))
    assert torch.equal(trajectory_weight(out.d_j, out.d_0, tau=0.1, weighting="none"), torch.ones(2))


def test_hinge_gives_zero_gradient_above_lambda():
    r = torch.tensor([0.2, 0.7, 0.5], requires_grad=True)
    loss = hinge_loss(r, torch.tensor([2.0, 3.0, 1.0]), lam=0.6)
    loss.backward()
    assert loss.item() == pytest.approx((2.0 * 0.4 + 0.1) / 3)
    assert torch.allclose(r.grad, torch.tensor([-2 / 3, 0.0, -1 / 3]))


def test_hinge_through_leapalign_touches_only_samples_below_lambda():
    class PerSampleVelocity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.offset = torch.nn.Parameter(torch.zeros(2, DIM))

        def forward(self, x, sigma):
            return 0.1 * x + self.offset

    vel = PerSampleVelocity()
    reward = LinearReward(torch.ones(DIM))
    noise = torch.stack([torch.full((DIM,), 1.0), torch.full((DIM,), -1.0)])
    sigmas = flow_sigmas(4)
    x0 = capture_rollout(vel, noise, sigmas, keep=[]).final
    r = reward(x0, None)
    lam = float(r.mean())  # one sample above, one below
    res = compute_loss(MethodConfig(k=0, j=2, hinge_lambda=lam), vel, identity_decoder, reward, noise, sigmas,
                       ["a", "b"])
    res.loss.backward()
    above = int(r.argmax())
    assert torch.count_nonzero(vel.offset.grad[above]) == 0
    assert vel.offset.grad[1 - above].abs().min() > 0


@pytest.mark.parametrize("steps", [4, 32])
def test_leapalign_backward_uses_two_velocity_evaluations(steps):
    vel = CountingVelocity(MLPVelocity(DIM))
    sigmas = flow_sigmas(steps, shift=3.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        vel.calls.clear()
        res = compute_loss(MethodConfig(j=None, hinge_lambda=1.0), vel, sigmoid_decoder, LinearReward(1.0),
                           torch.randn(2, DIM), sigmas, ["a", "b"], gen)
        expected = 1 if res.metrics["j"] == steps else 2   # j = N: the s_j = 0 evaluation is skipped
        assert len(vel.grad_calls) == expected == res.metrics["velocity_evals"]
        assert len(vel.calls) == steps + expected
    vel.calls.clear()
    compute_loss(MethodConfig(k=1, j=3, hinge_lambda=1.0), vel, sigmoid_decoder, LinearReward(1.0),
                 torch.randn(2, DIM), sigmas, ["a", "b"])
    assert len(vel.grad_calls) == 2


def _bytes(name, steps, **kw):
    vel = MLPVelocity(DIM, hidden=64)
    cfg = MethodConfig(name=name, hinge_lambda=1.0, k=0, j=2, **kw)
    noise = torch.randn(4, DIM)
    return saved_tensor_bytes(lambda: compute_loss(cfg, vel, sigmoid_decoder, LinearReward(1.0), noise,
                                                   flow_sigmas(steps), ["p"] * 4).loss.backward())


def test_saved_bytes_flat_in_n_for_leapalign_linear_for_full_backprop():
    leap4, leap32 = _bytes("leapalign", 4), _bytes("leapalign", 32)
    assert leap4 == leap32 > 0
    full = {n: _bytes("full_backprop", n, gradient_checkpointing=False) for n in (4, 8, 32)}
    per_step = (full[8] - full[4]) / 4
    assert per_step > 0
    assert full[32] - full[4] == pytest.approx(28 * per_step, rel=1e-6)
    assert full[32] > 5 * leap32
