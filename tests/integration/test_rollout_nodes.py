"""Rollout capture samples exactly what ComfyUI's KSampler samples; leap loss on it is finite and explained."""

from __future__ import annotations

import pytest
import torch


class BrightnessReward:
    """A tiny differentiable reward: mean pixel value (what the tests push up)."""

    name = "brightness"
    scale = "0..1"
    default_lambda = 1.0

    def __call__(self, images, prompts):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"brightness: expected images [B, 3, H, W], got {tuple(images.shape)}")
        return images.mean(dim=(1, 2, 3))


@pytest.fixture
def rollout_nodes(pack_import):
    return pack_import("nodes.rollout_nodes")


@pytest.mark.parametrize("scheduler,steps,batch", [("simple", 4, 2), ("beta", 3, 1)])
def test_rollout_capture_reproduces_ksampler_and_sampler_custom(comfy, tiny_flux, flux_cond, rollout_nodes,
                                                                scheduler, steps, batch):
    import comfy_extras.nodes_custom_sampler as custom

    import nodes as comfy_nodes

    positive = [[flux_cond[0][0], dict(flux_cond[0][1])]]
    latent = {"samples": torch.zeros(batch, 16, 8, 8)}
    seed = 1234
    reference = comfy_nodes.KSampler().sample(tiny_flux, seed, steps, 1.0, "euler", scheduler, positive, positive,
                                              latent)[0]["samples"]
    captured, out = rollout_nodes.LeapAlignRolloutCapture().capture(tiny_flux, positive, latent, seed, steps,
                                                                    scheduler, -1, -1)
    assert out["samples"].shape == reference.shape
    assert (out["samples"] - reference).abs().max() < 1e-5
    assert reference.abs().max() > 0.1  # the comparison is not between two zero tensors

    # SamplerCustom (BasicGuider path of Flux workflows): same noise, same sigmas, same result
    sigmas = custom.BasicScheduler.execute(tiny_flux, scheduler, steps, 1.0)[0]
    guider = custom.BasicGuider.execute(tiny_flux, positive)[0]
    sampler = custom.KSamplerSelect.execute("euler")[0]
    noise = custom.RandomNoise.execute(seed)[0]
    custom_out = custom.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent)[0]["samples"]
    assert (out["samples"] - custom_out).abs().max() < 1e-5

    rollout = captured.rollout
    k, j = rollout.pair
    assert 0 <= k < j <= steps and set(rollout.latents) >= {k, j} - {steps}
    torch.testing.assert_close(rollout.sigmas, sigmas.float().cpu(), rtol=0, atol=0)


def test_rollout_pair_is_seeded_and_can_be_fixed(comfy, tiny_flux, flux_cond, rollout_nodes):
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    node = rollout_nodes.LeapAlignRolloutCapture()
    first = node.capture(tiny_flux, flux_cond, latent, 7, 6, "simple", -1, -1)[0].rollout.pair
    again = node.capture(tiny_flux, flux_cond, latent, 7, 6, "simple", -1, -1)[0].rollout.pair
    assert first == again
    assert node.capture(tiny_flux, flux_cond, latent, 7, 6, "simple", 2, 5)[0].rollout.pair == (2, 5)


def test_leap_loss_is_finite_and_matches_hand_formula(comfy, tiny_flux, tiny_vae, flux_cond, rollout_nodes):
    latent = {"samples": torch.zeros(2, 16, 8, 8)}
    captured, _ = rollout_nodes.LeapAlignRolloutCapture().capture(tiny_flux, flux_cond, latent, 3, 4, "simple", 1, 3)
    out = rollout_nodes.LeapAlignLeapLoss().compute(tiny_flux, captured, tiny_vae, BrightnessReward(), "a cat",
                                                    0.5, 0.9, 0.1)
    loss, text = out["result"]
    assert out["ui"]["text"] == [text]
    assert "k: 1" in text and "j: 3" in text and "d_j" in text and "weights" in text
    # recompute the hinge from the diagnostics: loss = mean(w * relu(0.9 - r))
    values = dict(line.split(": ", 1) for line in text.splitlines())
    rewards = [float(v) for v in values["rewards"].strip("[]").split(",")]
    weights = [float(v) for v in values["weights"].strip("[]").split(",")]
    expected = sum(w * max(0.0, 0.9 - r) for w, r in zip(weights, rewards)) / 2
    assert loss == pytest.approx(expected, rel=1e-3)
    assert torch.isfinite(torch.tensor(loss)) and loss > 0
    # the reward is scored on the real x_0: it equals the reward of decoding the rollout's final latent
    image = tiny_vae.decode(tiny_flux.model.process_latent_out(captured.rollout.final))
    assert rewards == pytest.approx(image.mean(dim=(1, 2, 3)).tolist(), abs=1e-4)


def test_leap_loss_node_errors_are_clear(comfy, tiny_flux, tiny_vae, flux_cond, rollout_nodes, pack_import):
    common = pack_import("nodes.common")
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    captured, _ = rollout_nodes.LeapAlignRolloutCapture().capture(tiny_flux, flux_cond, latent, 0, 3, "simple", -1, -1)

    class GrayReward(BrightnessReward):
        def __call__(self, images, prompts):
            return super().__call__(images.mean(dim=1, keepdim=True), prompts)

    with pytest.raises(common.LeapAlignNodeError, match=r"LeapAlign Leap Loss: .*expected images \[B, 3, H, W\]"):
        rollout_nodes.LeapAlignLeapLoss().compute(tiny_flux, captured, tiny_vae, GrayReward(), "x", 0.5, 0.5, 0.1)
    with pytest.raises(common.LeapAlignNodeError, match="prompt is empty"):
        rollout_nodes.LeapAlignLeapLoss().compute(tiny_flux, captured, tiny_vae, BrightnessReward(), " ", 0.5, 0.5, 0.1)
    with pytest.raises(common.LeapAlignNodeError, match="k = 5 is outside"):
        rollout_nodes.LeapAlignRolloutCapture().capture(tiny_flux, flux_cond, latent, 0, 3, "simple", 5, -1)
