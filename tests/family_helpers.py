"""Helpers the family tests share: a family's random LoRA and one velocity read through ComfyUI's sampler.

Every family test (Flux.1, SD3, Flux.2/Chroma, the DiTs) checks the same things the same way; these
helpers keep one definition of "a LoRA with random non-zero weights" and "the velocity the training
rollout sees", so a change in how either is read reaches every family at once.
"""

from __future__ import annotations

import torch

from leapalign.lora import LoRAAdapter, LoRAConfig


def family(pack_import, model):
    return pack_import("nodes.families").family_of(model)


def random_lora(root, targets, rank=4, alpha=8.0, seed=3, dtype=torch.float32, std=0.2) -> LoRAAdapter:
    """A LoRA on ``root`` whose A and B are both random (a fresh LoRA's zero B would hide mapping bugs)."""
    lora = LoRAAdapter(root, LoRAConfig(rank=rank, alpha=alpha, targets=targets), dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * std)
    return lora


def family_lora(pack_import, model, preset, **kwargs) -> LoRAAdapter:
    """:func:`random_lora` on a loaded MODEL's diffusion model, targets from its family's ``preset``."""
    return random_lora(model.model.diffusion_model, family(pack_import, model).targets(preset), **kwargs)


def velocity(pack_import, model, positive, x, sigma) -> torch.Tensor:
    """The velocity at ``(x, sigma)`` as the training rollout reads it (ComfyUI's sampler machinery)."""
    adapters = pack_import("nodes.adapters")

    def body(velocity_fn, x_init, grid, inner):
        return velocity_fn(x, sigma), x_init

    with torch.no_grad():
        v, _ = adapters.sample_with(model, positive, torch.zeros_like(x), torch.tensor([1.0, 0.0]), body)
    return v


def lora_loss(pack_import, model, lora, cond, x, sigma, weight):
    """``sum(v(x, sigma) * weight)`` through the training path (seam, LoRA hooks) with autograd on."""
    adapters = pack_import("nodes.adapters")
    seam = pack_import("nodes.autograd_seam")

    def body(velocity_fn, x_init, grid, inner):
        return (velocity_fn(x, sigma) * weight).sum(), x_init

    with seam.autograd_enabled():
        loss, _ = adapters.sample_with(adapters.training_clone(model, lora), cond, torch.zeros_like(x),
                                       torch.tensor([1.0, 0.0], dtype=x.dtype), body,
                                       prepare_model=adapters.prepare_for_autograd)
    return loss
