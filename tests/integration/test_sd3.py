"""SD3 / SD3.5 through the family layer: rollout == KSampler, exact gradients, LoRA files for ComfyUI and diffusers.

Both SD3.5 architectures are covered by a tiny model built through ComfyUI's own SD3 classes
(``tests/sd3_fixtures.py``): ``medium`` (MMDiT-X, a second image self-attention) and ``large``.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from family_helpers import family as _family
from family_helpers import family_lora as _random_lora
from family_helpers import lora_loss as _lora_loss
from family_helpers import velocity as _velocity

from leapalign.lora import LoRAAdapter, LoRAConfig, LoRAMetadata

VARIANTS = ["medium", "large"]


@pytest.fixture(params=VARIANTS)
def tiny_sd3(comfy, request):
    from sd3_fixtures import build_tiny_sd3

    return build_tiny_sd3(request.param, seed=0)


@pytest.fixture
def sd3_cond(comfy):
    from sd3_fixtures import sd3_conditioning

    return sd3_conditioning(batch=1)


def test_sd3_model_is_the_sd3_family_with_every_preset_matching(tiny_sd3, pack_import):
    family = _family(pack_import, tiny_sd3)
    assert family.name == "sd3"
    paths = {p for p, m in tiny_sd3.model.diffusion_model.named_modules() if isinstance(m, torch.nn.Linear)}
    counts = {}
    for preset in family.lora_presets:
        counts[preset] = len(LoRAAdapter(tiny_sd3.model.diffusion_model, LoRAConfig(targets=family.targets(preset),
                                                                                    rank=2)).paths)
    has_attn2 = "joint_blocks.0.x_block.attn2.qkv" in paths
    # per block: x qkv+proj (+ attn2 qkv+proj), context qkv (+ proj unless pre-only last block)
    attention = 2 * 2 + (2 if has_attn2 else 0) + 2 + 1
    assert counts["attention"] == attention
    assert counts["attention+mlp"] == attention + 2 * 2 + 2  # x mlp in both blocks, context mlp in block 0
    assert counts["attention+mlp+modulation"] == counts["attention+mlp"] + 4


@pytest.mark.parametrize("shift", [None, 6.0])
def test_rollout_capture_reproduces_ksampler_with_the_models_shift(tiny_sd3, sd3_cond, pack_import, shift):
    import comfy_extras.nodes_model_advanced as advanced

    import nodes as comfy_nodes

    model = tiny_sd3 if shift is None else advanced.ModelSamplingSD3().patch(tiny_sd3, shift)[0]
    sampling = model.get_model_object("model_sampling")
    assert sampling.shift == (3.0 if shift is None else shift)
    latent = {"samples": torch.zeros(2, 16, 8, 8)}
    reference = comfy_nodes.KSampler().sample(model, 77, 4, 1.0, "euler", "simple", sd3_cond, sd3_cond,
                                              latent)[0]["samples"]
    captured, out = pack_import("nodes.rollout_nodes").LeapAlignRolloutCapture.execute(
        model, sd3_cond, latent, 77, 4, "simple", -1, -1).result
    assert (out["samples"] - reference).abs().max() < 1e-5
    assert reference.abs().max() > 0.1
    expected = pack_import("nodes.adapters").model_sigmas(model, "simple", 4)
    torch.testing.assert_close(captured.rollout.sigmas, expected, rtol=0, atol=0)
    # the shift is the model's: sigma_1 of a 4-step simple grid is shift*t / (1 + (shift-1)*t) at t = 0.75
    s = sampling.shift
    assert abs(float(expected[1]) - s * 0.75 / (1 + (s - 1) * 0.75)) < 1e-4


def test_mmdit_blocks_need_no_rewrite_the_seam_changes_nothing(tiny_sd3, sd3_cond, pack_import):
    """SD3.5's joint blocks compute out of place (the ``x += ...`` in ComfyUI's MMDiT file are in
    context-processor blocks SD3.5 does not use, and in ControlNet adds): LoRA gradients with and
    without the out-of-place seam are the same numbers, and the finite-difference check below shows
    they are right."""
    seam = pack_import("nodes.autograd_seam")
    compat = pack_import("nodes.comfy_compat")
    lora = _random_lora(pack_import, tiny_sd3, "attention+mlp+modulation", rank=2, alpha=2.0)
    model = tiny_sd3.model
    pack_import("nodes.adapters").prepare_for_autograd(model)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    grads = []
    for mode in (contextlib.nullcontext, seam.OutOfPlaceAdds):
        for p in lora.parameters():
            p.grad = None
        with seam.autograd_enabled(), compat.training_mode(), lora.applied(model.diffusion_model), mode():
            out = model.diffusion_model(x, torch.tensor([500.0]), context=sd3_cond[0][0],
                                        y=sd3_cond[0][1]["pooled_output"])
        out.square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in lora.parameters()]))
    assert grads[1].abs().max() > 1.0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_through_the_seam_matches_finite_differences(comfy, pack_import, variant):
    """Autograd through ComfyUI's MMDiT (seam + training switches + LoRA hooks) vs central differences, float64.

    ComfyUI's ``apply_model`` returns the model output as float32 whatever the model dtype, which puts
    rounding noise into the differences (relative error 7e-4 at step 1e-5, 6e-6 to 8e-5 at 1e-4),
    while the truncation error of a central difference is 1.4e-4 at step 1e-3. Richardson
    extrapolation over steps 1e-3 and 2e-3 cancels the truncation term, so tolerance 2e-5 holds and
    still rejects a wrong gradient (a missing seam or a hook that is not applied gives errors of order
    1 or a crash).
    """
    from sd3_fixtures import build_tiny_sd3, sd3_conditioning

    model = build_tiny_sd3(variant, seed=0, dtype=torch.float64)
    lora = _random_lora(pack_import, model, "attention+mlp+modulation", rank=2, alpha=2.0, seed=5,
                        dtype=torch.float64, std=0.1)
    cond = sd3_conditioning(batch=2)
    cond = [[cond[0][0].double(), {"pooled_output": cond[0][1]["pooled_output"].double()}]]
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 16, 8, 8, generator=gen, dtype=torch.float64).requires_grad_(True)
    sigma = torch.tensor([0.7, 0.4], dtype=torch.float64)
    weight = torch.randn(2, 16, 8, 8, generator=gen, dtype=torch.float64)
    params = list(lora.parameters())

    loss = _lora_loss(pack_import, model, lora, cond, x, sigma, weight)
    grads = torch.autograd.grad(loss, params + [x])

    def shifted_loss(directions, amount):
        with torch.no_grad():
            for p, d in zip(params, directions, strict=False):
                p.add_(amount * d)
        try:
            x_shifted = (x + amount * directions[-1]).detach()
            return float(_lora_loss(pack_import, model, lora, cond, x_shifted, sigma, weight).detach())
        finally:
            with torch.no_grad():
                for p, d in zip(params, directions, strict=False):
                    p.sub_(amount * d)

    step = 1e-3
    for trial in range(2):
        directions = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in params + [x]]
        predicted = sum(float((g * d).sum()) for g, d in zip(grads, directions, strict=True))
        central = [(shifted_loss(directions, h) - shifted_loss(directions, -h)) / (2 * h) for h in (step, 2 * step)]
        measured = (4 * central[0] - central[1]) / 3  # Richardson: the h^2 truncation term cancels
        assert abs(predicted) > 1e-3, "the check needs a gradient that is not ~0"
        assert abs(measured - predicted) <= 2e-5 * abs(predicted), (trial, measured, predicted)


@pytest.mark.parametrize("preset", ["attention", "attention+mlp", "attention+mlp+modulation"])
def test_saved_lora_via_stock_loader_gives_the_trained_velocity(tiny_sd3, sd3_cond, pack_import, caplog, preset):
    import folder_paths

    import nodes as comfy_nodes

    family = _family(pack_import, tiny_sd3)
    lora_nodes = pack_import("nodes.lora_nodes")
    lora = _random_lora(pack_import, tiny_sd3, preset)
    sd = family.export_lora(lora, None, tiny_sd3)
    assert all(k.startswith("transformer.transformer_blocks.") for k in sd)
    trained = lora_nodes.TrainedLoRA(sd, lora.config, LoRAMetadata(steps=1, base_model_version=family.name))
    name = lora_nodes.LeapAlignSaveLoRA.execute(trained, f"sd3/{preset}", "fp32").result[0]
    assert name in folder_paths.get_filename_list("loras")

    with caplog.at_level(logging.WARNING):
        loaded = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(tiny_sd3, name, 1.0)[0]
    assert not [r.getMessage() for r in caplog.records if "lora key not loaded" in r.getMessage()
                or "NOT LOADED" in r.getMessage()]
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.7, 0.4])
    cond = [[sd3_cond[0][0].repeat(2, 1, 1), {"pooled_output": sd3_cond[0][1]["pooled_output"].repeat(2, 1)}]]
    hooked = _velocity(pack_import, pack_import("nodes.adapters").training_clone(tiny_sd3, lora), cond, x, sigma)
    stock = _velocity(pack_import, loaded, cond, x, sigma)
    base = _velocity(pack_import, tiny_sd3, cond, x, sigma)
    assert (hooked - stock).abs().max() < 1e-4
    assert (hooked - base).abs().max() > 1e-2


def _diffusers_sd3(unet_config):
    from diffusers import SD3Transformer2DModel
    from sd3_fixtures import CONTEXT_DIM, POOLED_DIM

    depth = unet_config["depth"]
    return SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=depth, attention_head_dim=64,
        num_attention_heads=depth, joint_attention_dim=CONTEXT_DIM, caption_projection_dim=64 * depth,
        pooled_projection_dim=POOLED_DIM, pos_embed_max_size=unet_config["pos_embed_max_size"],
        dual_attention_layers=tuple(unet_config["x_block_self_attn_layers"]), qk_norm="rms_norm")


@pytest.mark.parametrize("preset", ["attention+mlp", "attention+mlp+modulation"])
def test_saved_lora_loads_in_diffusers_with_every_target_mapped(tiny_sd3, pack_import, preset, caplog):
    """diffusers' SD3 loader takes every tensor, and its pieces rebuild exactly our delta-W per fused layer."""
    import comfy.utils
    from peft.utils import get_peft_model_state_dict

    family = _family(pack_import, tiny_sd3)
    lora = _random_lora(pack_import, tiny_sd3, preset)
    sd = family.export_lora(lora, None, tiny_sd3)
    unet_config = tiny_sd3.model.model_config.unet_config
    transformer = _diffusers_sd3(unet_config)
    with caplog.at_level(logging.WARNING):
        transformer.load_lora_adapter(dict(sd), prefix="transformer", adapter_name="leap")
    assert not [r.getMessage() for r in caplog.records if "unexpected" in r.getMessage().lower()]
    loaded = get_peft_model_state_dict(transformer, adapter_name="leap")
    assert len(loaded) == len(sd)  # nothing dropped, nothing extra
    for key, value in sd.items():
        assert torch.equal(loaded[key[len("transformer."):]], value), key

    # numbers: diffusers' delta-W, mapped onto ComfyUI's fused weights with ComfyUI's own table
    key_map = comfy.utils.mmdit_to_diffusers(unet_config)
    rebuilt: dict[str, torch.Tensor] = {}
    for name, module in transformer.named_modules():
        if not hasattr(module, "lora_A") or "leap" not in module.lora_A:
            continue
        delta = module.lora_B["leap"].weight @ module.lora_A["leap"].weight * module.scaling["leap"]
        target = key_map[f"{name}.weight"]
        if isinstance(target, str):
            target = (target, None)
        key, offset, fn = (tuple(target) + (None,))[:3]
        path = key[: -len(".weight")]
        full = rebuilt.setdefault(path, torch.zeros_like(lora.factors()[path][1] @ lora.factors()[path][0]))
        piece = fn(delta) if fn is not None else delta
        if offset is not None:
            full.narrow(offset[0], offset[1], offset[2]).add_(piece)
        else:
            full.add_(piece)
    assert set(rebuilt) == set(lora.paths.values())
    for path, (down, up) in lora.factors().items():
        torch.testing.assert_close(rebuilt[path], up @ down, rtol=1e-5, atol=1e-6)
