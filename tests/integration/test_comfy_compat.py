"""The compatibility module's workarounds, on whichever ComfyUI the suite runs against.

Paths that only older releases take (the RoPE swap of 0.8-0.13) are forced here on a newer ComfyUI
and compared against ComfyUI's own reference.
"""

from __future__ import annotations

import types

import pytest
import torch

from leapalign.lora import TARGET_PRESETS, LoRAAdapter, LoRAConfig


def _flux_kwargs(cond, batch):
    tensor, extras = cond[0]
    return {"c_crossattn": tensor.repeat(batch, 1, 1), "y": extras["pooled_output"].repeat(batch, 1),
            "guidance": torch.full((batch,), 3.5, dtype=tensor.dtype)}


def _grads(model, cond, x, seam, mode):
    x = x.clone().requires_grad_(True)
    with seam.OutOfPlaceAdds(), mode:
        out = model.apply_model(x, torch.tensor([0.6, 0.3]), **_flux_kwargs(cond, x.shape[0]))
    weight = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)
    (out * weight).sum().backward()
    return out.detach(), x.grad


def _flux_math():
    import comfy.ldm.flux.math as flux_math

    if not hasattr(flux_math, "_apply_rope"):
        pytest.skip("this ComfyUI (before 0.8) runs Flux RoPE in plain torch: there is no comfy_kitchen op to replace")
    return flux_math


def test_rope_op_has_no_backward_without_the_workaround(tiny_flux, flux_cond, pack_import):
    """Why 0.8+ needs the workaround: ComfyUI's default (inference) RoPE op cannot be differentiated."""
    flux_math = _flux_math()
    import comfy.model_management as mm

    assert not getattr(mm, "in_training", False)
    assert flux_math.apply_rope is not flux_math._apply_rope
    with pytest.raises(RuntimeError, match="autograd"):
        _grads(tiny_flux.model, flux_cond, torch.randn(2, 16, 8, 8), pack_import("nodes.autograd_seam"),
               torch.enable_grad())


def test_forced_rope_swap_matches_comfyui_training_path(tiny_flux, flux_cond, pack_import):
    """The 0.8-0.13 path (swap in ComfyUI's pure-torch RoPE, no flag) gives the 0.14+ flag path's numbers."""
    flux_math = _flux_math()
    import comfy.model_management as mm

    compat = pack_import("nodes.comfy_compat")
    seam = pack_import("nodes.autograd_seam")
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    op_rope, op_rope1 = flux_math.apply_rope, flux_math.apply_rope1
    with torch.no_grad():  # the comfy_kitchen op, as inference runs it
        reference = tiny_flux.model.apply_model(x, torch.tensor([0.6, 0.3]), **_flux_kwargs(flux_cond, 2))
    swapped_out, swapped_grad = _grads(tiny_flux.model, flux_cond, x, seam, compat.training_mode(force_rope_swap=True))
    assert flux_math.apply_rope is op_rope and flux_math.apply_rope1 is op_rope1  # restored
    assert mm.in_training is False
    flag_out, flag_grad = _grads(tiny_flux.model, flux_cond, x, seam, compat.training_mode())
    assert mm.in_training is False
    torch.testing.assert_close(swapped_out, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(swapped_out, flag_out, rtol=0, atol=1e-7)
    torch.testing.assert_close(swapped_grad, flag_grad, rtol=0, atol=1e-7)
    assert swapped_grad.abs().sum() > 0


def test_training_mode_without_the_flag_swaps_rope(tiny_flux, flux_cond, pack_import, monkeypatch):
    """On 0.8-0.13 (op present, no ``in_training``) the workaround is chosen by feature detection alone."""
    flux_math = _flux_math()
    import comfy.model_management as mm

    monkeypatch.delattr(mm, "in_training")
    compat = pack_import("nodes.comfy_compat")
    with compat.training_mode():
        assert flux_math.apply_rope is flux_math._apply_rope
        assert not hasattr(mm, "in_training")
    assert flux_math.apply_rope is not flux_math._apply_rope
    _, grad = _grads(tiny_flux.model, flux_cond, torch.randn(2, 16, 8, 8), pack_import("nodes.autograd_seam"),
                     compat.training_mode())
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_flux_state_dict_round_trips_through_the_file_layout(tiny_flux, pack_import):
    """Files use BFL names (``query_norm.scale``); every version loads them strictly into its own names."""
    compat = pack_import("nodes.comfy_compat")
    model = tiny_flux.model
    state = {k: v.clone() + 0.25 * (k.endswith("norm.weight") or k.endswith("norm.scale"))
             for k, v in model.diffusion_model.state_dict().items()}
    canonical = compat.canonical_flux_state_dict(state)
    assert any(k.endswith("query_norm.scale") for k in canonical)
    assert not any(k.endswith("query_norm.weight") for k in canonical)
    compat.load_flux_diffusion_state(model, canonical)
    loaded = model.diffusion_model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_static_weights_clone_uses_the_non_dynamic_delegate(pack_import):
    compat = pack_import("nodes.comfy_compat")
    calls = []

    class Patcher:
        def __init__(self, dynamic, delegate=True):
            self.dynamic = dynamic
            if delegate:
                self.get_non_dynamic_delegate = lambda: calls.append("delegate") or "static"

        def is_dynamic(self):
            return self.dynamic

        def clone(self, disable_dynamic=False):
            calls.append(("clone", disable_dynamic))
            if disable_dynamic and self.dynamic == "unbuildable":
                raise RuntimeError("Cannot create non-dynamic delegate: cached_patcher_init is not initialized.")
            return "copy"

    assert compat.static_weights_clone(Patcher(False)) == "copy"
    assert compat.static_weights_clone(Patcher(True)) == "static"
    assert compat.static_weights_clone(Patcher(True, delegate=False)) == "copy"
    assert calls == [("clone", False), "delegate", ("clone", True)]
    with pytest.raises(RuntimeError, match="--disable-dynamic-vram"):
        compat.static_weights_clone(Patcher("unbuildable", delegate=False))
    old_style = types.SimpleNamespace(clone=lambda: "old")  # before 0.12: no is_dynamic at all
    assert compat.static_weights_clone(old_style) == "old"


def test_executor_cache_args_name_every_key_the_executor_reads(comfy, pack_import):
    import inspect

    import execution

    args = pack_import("nodes.comfy_compat").executor_cache_args()
    source = inspect.getsource(execution)
    for key in ("lru", "ram", "ram_inactive"):
        if f'cache_args["{key}"]' in source:
            assert key in args


# --------------------------------------------------------------------------- gradient check

def _lora_loss(pack_import, model, lora, cond, x, sigma, weight):
    """sum(weight * v) with ``v`` the velocity the training path computes (seam, flag, LoRA hooks)."""
    adapters = pack_import("nodes.adapters")
    seam = pack_import("nodes.autograd_seam")

    def body(velocity, x_init, grid, inner):
        return (velocity(x, sigma) * weight).sum(), x_init

    with seam.autograd_enabled():
        loss, _ = adapters.sample_with(adapters.training_clone(model, lora), cond, torch.zeros_like(x),
                                       torch.tensor([1.0, 0.0], dtype=x.dtype), body,
                                       prepare_model=adapters.prepare_for_autograd)
    return loss


def test_gradient_through_the_seam_matches_finite_differences(comfy, pack_import):
    """Autograd through ComfyUI's Flux (seam + training flag + LoRA hooks) vs central differences, float64.

    ComfyUI computes RoPE in float32 whatever the model dtype, so the differences carry float32 noise
    (about 1e-7 relative per evaluation); the step 1e-3 keeps that and the truncation error
    below 1e-4 relative, while a wrong gradient (for example ComfyUI's own checkpointing helper on Flux,
    up to 5 % off) is far outside the tolerance.
    """
    from comfy_fixtures import build_tiny_flux, flux_conditioning

    model = build_tiny_flux(seed=0, dtype=torch.float64)
    lora = LoRAAdapter(model.model.diffusion_model, LoRAConfig(rank=2, alpha=2.0, targets=TARGET_PRESETS["attention+mlp+modulation"]),
                    dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in lora.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.1)
    cond = [[flux_conditioning()[0][0].double(), {k: (v.double() if torch.is_tensor(v) else v)
                                                 for k, v in flux_conditioning()[0][1].items()}]]
    x = torch.randn(2, 16, 8, 8, generator=gen, dtype=torch.float64).requires_grad_(True)
    sigma = torch.tensor([0.7, 0.4], dtype=torch.float64)
    weight = torch.randn(2, 16, 8, 8, generator=gen, dtype=torch.float64)
    params = list(lora.parameters())

    loss = _lora_loss(pack_import, model, lora, cond, x, sigma, weight)
    grads = torch.autograd.grad(loss, params + [x])
    step = 1e-3
    for trial in range(2):
        directions = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in params + [x]]
        predicted = sum(float((g * d).sum()) for g, d in zip(grads, directions, strict=True))
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, d in zip(params, directions, strict=False):
                    p.add_(sign * step * d)
            x_shifted = (x + sign * step * directions[-1]).detach()
            values.append(float(_lora_loss(pack_import, model, lora, cond, x_shifted, sigma, weight).detach()))
            with torch.no_grad():
                for p, d in zip(params, directions, strict=False):
                    p.sub_(sign * step * d)
        measured = (values[0] - values[1]) / (2 * step)
        assert abs(predicted) > 1e-3, "the check needs a gradient that is not ~0"
        assert abs(measured - predicted) <= 1e-4 * abs(predicted), (trial, measured, predicted)
