"""The memory plan's arithmetic and presets, and pure-torch checkpointing (gradients unchanged)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from leapalign.checkpointing import checkpointed_modules, modules_of_type, repeated_blocks
from leapalign.memory_plan import (
    PRESET_ORDER,
    GiB,
    MemoryOptions,
    choose,
    figures,
    flux1_dev,
    plan,
    summary,
)


def test_24gb_preset_fits_flux1_dev_fp8_720_hpsv21_within_22_gib():
    p = choose(flux1_dev(720, 720, batch=1, weight_bytes=1), 24)
    assert p.peak <= 22 * GiB
    assert p.options.checkpoint_blocks and p.options.offload_text_encoders
    # without options the same step is far beyond any single card
    assert plan(flux1_dev()).peak > 80 * GiB


def test_every_option_lowers_the_peak_and_keeps_the_weights():
    shape = flux1_dev()
    base = plan(shape)
    for name in PRESET_ORDER[:-1]:  # weight_offload needs a budget
        with_option = plan(shape, MemoryOptions(**{name: True}))
        assert with_option.peak < base.peak, name
        assert with_option.components["diffusion weights"] == base.components["diffusion weights"]


def test_weight_offload_moves_weights_off_to_fit_the_budget():
    shape = flux1_dev(weight_bytes=2)  # bf16 Flux.1-dev: 22 GiB of weights alone
    options = MemoryOptions(*([True] * 6))
    budget = 22 * GiB
    p = plan(shape, options, budget)
    assert p.peak == pytest.approx(budget, rel=1e-9)
    assert p.components["diffusion weights"] < shape.diffusion_params * 2
    assert any("off the device" in n for n in p.notes)


def test_activations_scale_with_batch_and_tokens():
    one, two = plan(flux1_dev(batch=1)), plan(flux1_dev(batch=2))
    for part in ("velocity activations", "decoder activations", "reward activations"):
        assert two.components[part] == pytest.approx(2 * one.components[part], rel=1e-9)
    small = plan(flux1_dev(512, 512))
    tokens = (32 * 32 + 512) / (45 * 45 + 512)
    assert small.components["velocity activations"] == pytest.approx(tokens * one.components["velocity activations"],
                                                                      rel=1e-9)


def test_per_block_figures_add_up_to_a_two_by_two_model():
    check = figures()["flux"]["blocks_2x2_check"]
    assert check["predicted"] == pytest.approx(check["measured"], rel=0.02)


def test_presets_pick_fewer_options_for_bigger_cards_and_summary_names_the_verdict():
    small, big = choose(flux1_dev(), 24), choose(flux1_dev(), 80)
    assert len(big.options.enabled()) < len(small.options.enabled())
    text = summary(small, 24)
    assert "predicted peak" in text and "fits" in text
    assert "does NOT fit" in summary(plan(flux1_dev()), 24)
    assert choose(flux1_dev(), None).options == MemoryOptions()


def test_an_unmeasured_reward_is_named_in_the_notes():
    shape = flux1_dev()
    shape = replace(shape, reward=replace(shape.reward, name="mystery", measured=False))
    assert any("mystery" in n for n in plan(shape).notes)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return x + self.b(torch.tanh(self.a(x)))


def _grads(model, x):
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    model(x).square().sum().backward()
    return [p.grad.clone() for p in model.parameters()] + [x.grad]


def test_checkpointed_modules_give_the_same_gradients_and_restore_forward():
    torch.manual_seed(0)
    model = nn.Sequential(*[_Block() for _ in range(5)])
    x = torch.randn(3, 8)
    reference = _grads(model, x)
    saved = []
    blocks = modules_of_type(model, ("_Block",))
    assert len(blocks) == 5 and repeated_blocks(nn.ModuleList(list(model))) == list(model)
    with checkpointed_modules(blocks) as count, torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel()) or t, lambda t: t):
        checked = _grads(model, x)
    assert count == 5
    for a, b in zip(reference, checked):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert "forward" not in vars(blocks[0])  # the class's forward shows through again
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(-t.numel()) or t, lambda t: t):
        _grads(model, x)
    assert sum(n for n in saved if n > 0) < sum(-n for n in saved if n < 0)  # checkpointing kept less
