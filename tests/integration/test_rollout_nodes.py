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


def _method(pack_import, alpha=0.3, hinge_lambda=-1.0, tau=0.1, **extra):
    """A LeapAlign Method block's output (the socket value the inspection nodes take)."""
    block = pack_import("nodes.method_nodes").LeapAlignMethod
    return block.execute(alpha=alpha, tau=tau, hinge_lambda=hinge_lambda, **extra).result[0]


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
    captured, out = rollout_nodes.LeapAlignRolloutCapture.execute(tiny_flux, positive, latent, seed, steps,
                                                                  scheduler, -1, -1).result
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
    node = rollout_nodes.LeapAlignRolloutCapture
    first = node.execute(tiny_flux, flux_cond, latent, 7, 6, "simple", -1, -1).result[0].rollout.pair
    again = node.execute(tiny_flux, flux_cond, latent, 7, 6, "simple", -1, -1).result[0].rollout.pair
    assert first == again
    assert node.execute(tiny_flux, flux_cond, latent, 7, 6, "simple", 2, 5).result[0].rollout.pair == (2, 5)


def test_leap_loss_is_finite_and_matches_hand_formula(comfy, tiny_flux, tiny_vae, flux_cond, rollout_nodes, pack_import):
    latent = {"samples": torch.zeros(2, 16, 8, 8)}
    captured, _ = rollout_nodes.LeapAlignRolloutCapture.execute(tiny_flux, flux_cond, latent, 3, 4, "simple", 1,
                                                                3).result
    method = _method(pack_import, alpha=0.5, hinge_lambda=0.9, tau=0.1)
    out = rollout_nodes.LeapAlignLeapLoss.execute(tiny_flux, captured, tiny_vae, BrightnessReward(), "a cat", method)
    loss, text = out.result
    assert out.ui["text"] == [text]
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
    captured, _ = rollout_nodes.LeapAlignRolloutCapture.execute(tiny_flux, flux_cond, latent, 0, 3, "simple", -1,
                                                                -1).result
    method = _method(pack_import, alpha=0.5, hinge_lambda=0.5, tau=0.1)

    class GrayReward(BrightnessReward):
        def __call__(self, images, prompts):
            return super().__call__(images.mean(dim=1, keepdim=True), prompts)

    with pytest.raises(common.LeapAlignNodeError, match=r"LeapAlign Leap Loss: .*expected images \[B, 3, H, W\]"):
        rollout_nodes.LeapAlignLeapLoss.execute(tiny_flux, captured, tiny_vae, GrayReward(), "x", method)
    with pytest.raises(common.LeapAlignNodeError, match="prompt is empty"):
        rollout_nodes.LeapAlignLeapLoss.execute(tiny_flux, captured, tiny_vae, BrightnessReward(), " ", method)
    with pytest.raises(common.LeapAlignNodeError, match="k = 5 is outside"):
        rollout_nodes.LeapAlignRolloutCapture.execute(tiny_flux, flux_cond, latent, 0, 3, "simple", 5, -1)


def test_inspection_nodes_take_the_method_block(comfy, tiny_flux, tiny_vae, flux_cond, rollout_nodes, pack_import):
    """The capture draws (k, j) with the block's pair sampling; the leap loss uses its alpha/hinge and refuses a
    baseline block."""
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    capture = rollout_nodes.LeapAlignRolloutCapture
    pseudocode = _method(pack_import, pair_sampling="pseudocode")
    pairs = {"released": set(), "pseudocode": set()}
    for seed in range(16):
        pairs["released"].add(capture.execute(tiny_flux, flux_cond, latent, seed, 3, "simple", -1, -1,
                                              _method(pack_import)).result[0].rollout.pair)
        pairs["pseudocode"].add(capture.execute(tiny_flux, flux_cond, latent, seed, 3, "simple", -1, -1,
                                                pseudocode).result[0].rollout.pair)
    assert all(j < 3 for _, j in pairs["released"])  # released: j is never the final point
    assert any(j == 3 for _, j in pairs["pseudocode"])  # pseudocode: the final point can be j
    captured = capture.execute(tiny_flux, flux_cond, latent, 0, 3, "simple", 0, 2).result[0]
    loss_node = rollout_nodes.LeapAlignLeapLoss
    low, text = loss_node.execute(tiny_flux, captured, tiny_vae, BrightnessReward(), "x",
                                  _method(pack_import, hinge_lambda=0.5)).result
    high = loss_node.execute(tiny_flux, captured, tiny_vae, BrightnessReward(), "x",
                             _method(pack_import, hinge_lambda=0.9)).result[0]
    values = dict(line.split(": ", 1) for line in text.splitlines())
    weight, reward = float(values["weights"].strip("[]")), float(values["rewards"].strip("[]"))
    assert reward < 0.5  # both hinges active, so the loss moves by weight * (0.9 - 0.5)
    assert high - low == pytest.approx(weight * 0.4, rel=1e-3)
    refl = pack_import("nodes.method_nodes").LeapAlignMethodReFL.execute(late_fraction=0.44,
                                                                         hinge_lambda=-1.0).result[0]
    with pytest.raises(pack_import("nodes.common").LeapAlignNodeError, match="needs a LeapAlign Method block"):
        loss_node.execute(tiny_flux, captured, tiny_vae, BrightnessReward(), "x", refl)
