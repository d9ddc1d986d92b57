"""No-grad Euler rollout: ComfyUI's arithmetic, kept indices, dtypes."""

import pytest
import torch
from leap_toys import CountingVelocity, MLPVelocity

from leapalign.rollout import capture_rollout
from leapalign.sigmas import flow_sigmas

pytestmark = pytest.mark.usefixtures("one_thread")


def comfy_style_euler(model, x, sigmas):
    """The body of ComfyUI's sample_euler with s_churn = 0, with d given directly."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i]
        d = model(x, sigma_hat * s_in)
        dt = sigmas[i + 1] - sigma_hat
        x = x + d * dt
    return x


def test_matches_comfy_euler_bit_for_bit():
    vel = MLPVelocity(6)
    noise = torch.randn(3, 6)
    sigmas = flow_sigmas(12, shift=3.0)
    with torch.no_grad():
        ref = comfy_style_euler(vel, noise, sigmas)
    rollout = capture_rollout(vel, noise, sigmas, keep=[])
    assert torch.equal(rollout.final, ref)


def test_keeps_only_requested_latents_and_no_grad():
    vel = CountingVelocity(MLPVelocity(6))
    noise = torch.randn(2, 6)
    sigmas = flow_sigmas(8)
    full = capture_rollout(vel, noise, sigmas)
    assert sorted(full.latents) == list(range(9))
    assert torch.equal(full.latents[0], noise)
    part = capture_rollout(vel, noise, sigmas, keep=[2, 5])
    assert sorted(part.latents) == [2, 5]
    assert torch.equal(part[2], full[2]) and torch.equal(part[5], full[5]) and torch.equal(part.final, full[8])
    assert all(not c["grad"] for c in vel.calls) and not part.final.requires_grad
    with pytest.raises(KeyError, match="not kept"):
        part[3]
    # sigma handed to the velocity is s_i for every sample
    assert torch.equal(vel.calls[3]["sigma"], sigmas[3].expand(2))


def test_stop_early():
    vel = MLPVelocity(4)
    noise = torch.randn(2, 4)
    sigmas = flow_sigmas(6)
    full = capture_rollout(vel, noise, sigmas)
    early = capture_rollout(vel, noise, sigmas, keep=[], stop=4)
    assert early.stop == 4 and torch.equal(early.final, full[4])


def test_bf16_rollout_returns_noise_dtype():
    vel = CountingVelocity(MLPVelocity(4).to(torch.bfloat16))
    noise = torch.randn(2, 4)
    rollout = capture_rollout(vel, noise, flow_sigmas(4), keep=[1], dtype=torch.bfloat16)
    assert rollout.final.dtype == torch.float32 and rollout[1].dtype == torch.float32
    assert all(c["x"].dtype == torch.bfloat16 for c in vel.calls)
    ref = capture_rollout(MLPVelocity(4), noise, flow_sigmas(4), keep=[])
    assert torch.allclose(rollout.final, ref.final, atol=0.1)


def test_batches_of_different_prompts_stay_separate():
    vel = MLPVelocity(4)
    noise = torch.randn(3, 4)
    sigmas = flow_sigmas(5)
    together = capture_rollout(vel, noise, sigmas, keep=[]).final
    alone = torch.cat([capture_rollout(vel, noise[i:i + 1], sigmas, keep=[]).final for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-6)
