"""Bad graph input stops the LeapAlign nodes with a message naming the problem (acceptance 8)."""

from __future__ import annotations

import pytest
import torch


class SizedReward:
    """A reward that, like CLIP-based ones without resizing, only scores images of one size."""

    name, scale, default_lambda = "sized", "", 1.0

    def __call__(self, images, prompts):
        if tuple(images.shape[-2:]) != (224, 224):
            raise ValueError(f"sized: expected 224x224 images, got {tuple(images.shape[-2:])}")
        return images.mean(dim=(1, 2, 3))


def _run(train_nodes, model, clip, vae, reward, prompts, rank=4):
    settings = train_nodes.LoRASettings(rank=rank, alpha=4.0, targets="attention+mlp")
    with torch.inference_mode():
        return train_nodes.LeapAlignTrain.execute(
            model, clip, vae, reward, prompts, lora_settings=settings, steps=1, batch_size=1, grad_accumulation=1,
            seed=0, width=32, height=32, sampling_steps=2, scheduler="simple", guidance=3.5, checkpoint_every=0,
            run_name="errors", resume=False)


@pytest.fixture
def parts(comfy, tiny_flux, tiny_clip, tiny_vae, pack_import):
    return pack_import("nodes.train_nodes"), pack_import("nodes.common").LeapAlignNodeError, tiny_flux, tiny_clip, tiny_vae


def test_non_flux_model(parts):
    train_nodes, NodeError, flux, clip, vae = parts
    not_flux = flux.clone()
    not_flux.model = torch.nn.Linear(2, 2)
    with pytest.raises(NodeError, match=r"^LeapAlign Train LoRA: the model is a Linear, not a Flux model"):
        _run(train_nodes, not_flux, clip, vae, SizedReward(), ["a cat"])


def test_empty_prompt_list(parts):
    train_nodes, NodeError, flux, clip, vae = parts
    with pytest.raises(NodeError, match=r"^LeapAlign Train LoRA: the prompts input contains no prompts"):
        _run(train_nodes, flux, clip, vae, SizedReward(), [])


def test_reward_that_does_not_fit_the_images(parts):
    train_nodes, NodeError, flux, clip, vae = parts
    with pytest.raises(NodeError, match=r"reward cannot score the decoded images .*expected 224x224 images, got \(32, 32\)"):
        _run(train_nodes, flux, clip, vae, SizedReward(), ["a cat"])


def test_rank_larger_than_a_layer(parts):
    train_nodes, NodeError, flux, clip, vae = parts
    with pytest.raises(NodeError, match=r"LoRA rank 100 is larger than layer .* use a rank of at most 64"):
        _run(train_nodes, flux, clip, vae, SizedReward(), ["a cat"], rank=100)
