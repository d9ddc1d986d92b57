"""Flux.2 and Chroma through the family layer: rollout == KSampler, exact gradients, LoRA files for ComfyUI.

Tiny models from ``tests/family_fixtures_flux.py`` (built through ComfyUI's ``supported_models.Flux2`` and
``.Chroma``). The diffusers loaders are checked in ``test_flux2_chroma_diffusers.py``.
"""

from __future__ import annotations

import logging

import pytest
import torch
from family_helpers import family as _family
from family_helpers import family_lora as _random_lora
from family_helpers import velocity as _velocity

from leapalign.lora import LoRAAdapter, LoRAConfig, LoRAMetadata

FAMILIES = ["flux2", "chroma"]
# latent channels, latent side for the tests' 64x64 images, and the presets each family offers
SHAPES = {"flux2": (128, 4), "chroma": (16, 8)}


def _build(name, **kwargs):
    import family_fixtures_flux as ff

    return {"flux2": ff.build_tiny_flux2, "chroma": ff.build_tiny_chroma}[name](**kwargs)


def _cond(name, batch=1, tokens=8, seed=0):
    import family_fixtures_flux as ff

    if name == "flux2":
        return ff.flux2_conditioning(batch=batch, tokens=tokens, seed=seed)
    return ff.chroma_conditioning(batch=batch, tokens=tokens, seed=seed)


def _x(name, batch, seed, dtype=torch.float32):
    channels, side = SHAPES[name]
    return torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(params=FAMILIES)
def tiny(comfy, request):
    return request.param, _build(request.param, seed=0)


def test_each_model_is_its_own_family_with_its_presets(tiny, pack_import):
    name, model = tiny
    family = _family(pack_import, model)
    assert family.name == name
    # image sizes: Flux.2 latent 1/16 with patch 1, Chroma latent 1/8 with patch 2
    shape = pack_import("nodes.adapters").sample_latent_shape(model, 96, 64, family.latent_downscale)
    assert shape == ((128, 4, 6) if name == "flux2" else (16, 8, 12))
    family.check_size(96, 64)
    with pytest.raises(ValueError, match=r"multiples of 16 for (Flux\.2|Chroma), got 72x64"):
        family.check_size(72, 64)
    counts = {preset: len(LoRAAdapter(model.model.diffusion_model,
                                      LoRAConfig(targets=family.targets(preset), rank=2)).paths)
              for preset in family.lora_presets}
    # one double block: img/txt qkv + proj; one single block: linear1 (+ linear2 with the MLP)
    assert counts["attention"] == 4 + 1
    assert counts["attention+mlp"] == 4 + 4 + 2
    if name == "flux2":  # global modulation: one img, one txt, one single-stream layer
        assert counts["attention+mlp+modulation"] == counts["attention+mlp"] + 3
    else:
        with pytest.raises(ValueError, match=r"preset 'attention\+mlp\+modulation' is not defined for Chroma; "
                                             r"choose one of \['attention', 'attention\+mlp'\]"):
            family.targets("attention+mlp+modulation")


def test_rollout_capture_reproduces_ksampler(tiny, pack_import):
    import nodes as comfy_nodes

    name, model = tiny
    cond = _cond(name)
    channels, side = SHAPES[name]
    latent = {"samples": torch.zeros(2, channels, side, side)}
    reference = comfy_nodes.KSampler().sample(model, 77, 3, 1.0, "euler", "simple", cond, cond, latent)[0]["samples"]
    captured, out = pack_import("nodes.rollout_nodes").LeapAlignRolloutCapture.execute(
        model, cond, latent, 77, 3, "simple", -1, -1).result
    assert (out["samples"] - reference).abs().max() < 1e-5
    assert reference.abs().max() > 0.1
    torch.testing.assert_close(captured.rollout.sigmas, pack_import("nodes.adapters").model_sigmas(model, "simple", 3),
                               rtol=0, atol=0)


def _lora_loss(pack_import, model, lora, cond, x, sigma, weight, seam=True):
    """``sum(weight * model output)`` through the family's seam and the LoRA hooks, all in float64.

    The diffusion model is called as ``apply_model`` calls it (timestep = sigma for these flow models,
    the conditioning's tensors), but directly: ``apply_model`` casts its output to float32, whose
    rounding would swamp the finite differences.
    """
    family = _family(pack_import, model)
    seam_cm = family.seam if seam else pack_import("nodes.comfy_compat").training_mode
    tensor, extras = cond[0]
    kwargs = {"guidance": torch.full((x.shape[0],), extras.get("guidance", 0.0), dtype=x.dtype)}
    inner = model.model.diffusion_model
    with pack_import("nodes.autograd_seam").autograd_enabled(), seam_cm(), lora.applied(inner):
        out = inner(x, sigma, tensor, transformer_options={}, **kwargs)
    return (out * weight).sum()


def _float64_setup(pack_import, name):
    model = _build(name, seed=0, dtype=torch.float64)
    preset = "attention+mlp+modulation" if name == "flux2" else "attention+mlp"
    lora = _random_lora(pack_import, model, preset, rank=2, alpha=2.0, seed=5, dtype=torch.float64, std=0.1)
    tensor, extras = _cond(name, batch=2)[0]
    cond = [[tensor.double(), extras]]
    gen = torch.Generator().manual_seed(6)
    x = _x(name, 2, 7, torch.float64).requires_grad_(True)
    weight = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return model, lora, cond, x, torch.tensor([0.7, 0.4], dtype=torch.float64), weight, gen


@pytest.mark.parametrize("name", FAMILIES)
def test_without_the_seam_backward_fails_on_the_in_place_residual_adds(comfy, pack_import, name):
    """The blocks are Flux's (``img += ...`` after a LayerNorm saved ``img``): the seam is needed here too."""
    model, lora, cond, x, sigma, weight, _ = _float64_setup(pack_import, name)
    loss = _lora_loss(pack_import, model, lora, cond, x, sigma, weight, seam=False)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("name", FAMILIES)
def test_gradient_through_the_seam_matches_finite_differences(comfy, pack_import, name):
    """Autograd through ComfyUI's blocks (seam + training switches + LoRA hooks) vs central differences.

    The model runs in float64 except RoPE, which ComfyUI computes in float32 (``comfy/ldm/flux/math.py``
    casts q and k to the float32 frequencies and back): that rounding puts noise of about 2e-5
    (absolute) into central differences at step 1e-3, less at larger steps, while the truncation error
    left after Richardson extrapolation grows as h^4 (2e-3 at step 1e-2). Steps 3e-3 and 6e-3 keep
    both near 1e-5 (at most 3.5e-5 measured): tolerance 2e-5 relative plus 1e-4 absolute, while a
    wrong gradient (a missing hook, a lost residual) is off by order 1 of the derivative. The
    training path through ``apply_model`` is the same call inside ComfyUI's sampler (the rollout test
    shows it computes what ``KSampler`` does).
    """
    model, lora, cond, x, sigma, weight, gen = _float64_setup(pack_import, name)
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

    for _ in range(2):
        directions = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in params + [x]]
        predicted = sum(float((g * d).sum()) for g, d in zip(grads, directions, strict=True))
        central = [(shifted_loss(directions, h) - shifted_loss(directions, -h)) / (2 * h) for h in (3e-3, 6e-3)]
        measured = (4 * central[0] - central[1]) / 3
        assert abs(predicted) > 1e-1, "the check needs a gradient that is not ~0"
        assert abs(measured - predicted) <= 2e-5 * abs(predicted) + 1e-4, (measured, predicted)
    assert all(float(g.abs().max()) > 0 for g in grads[:-1]), "every LoRA tensor gets a gradient"


@pytest.mark.parametrize("name,preset", [("flux2", "attention"), ("flux2", "attention+mlp+modulation"),
                                         ("chroma", "attention"), ("chroma", "attention+mlp")])
def test_saved_lora_via_stock_loader_patches_every_target_and_gives_the_trained_velocity(
        comfy, pack_import, caplog, name, preset):
    import folder_paths

    import nodes as comfy_nodes

    model = _build(name, seed=0)
    family = _family(pack_import, model)
    lora_nodes = pack_import("nodes.lora_nodes")
    lora = _random_lora(pack_import, model, preset)
    sd = family.export_lora(lora, None, model)
    trained = lora_nodes.TrainedLoRA(sd, lora.config, LoRAMetadata(steps=1, base_model_version=family.name))
    file = lora_nodes.LeapAlignSaveLoRA.execute(trained, f"{name}/{preset}", "fp32").result[0]
    assert file in folder_paths.get_filename_list("loras")

    with caplog.at_level(logging.WARNING):
        loaded = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, file, 1.0)[0]
    assert not [r.getMessage() for r in caplog.records if "lora key not loaded" in r.getMessage()
                or "NOT LOADED" in r.getMessage()]
    # every trained module's weight is patched, each by as many pieces as the file splits it into
    expected = {f"diffusion_model.{path}.weight" for path in lora.paths.values()}
    assert set(loaded.patches) == expected
    assert sum(len(v) for v in loaded.patches.values()) == len(sd) // 2

    x, sigma = _x(name, 2, 0), torch.tensor([0.7, 0.4])
    tensor, extras = _cond(name)[0]
    cond = [[tensor.repeat(2, 1, 1), extras]]
    hooked = _velocity(pack_import, pack_import("nodes.adapters").training_clone(model, lora), cond, x, sigma)
    stock = _velocity(pack_import, loaded, cond, x, sigma)
    base = _velocity(pack_import, model, cond, x, sigma)
    assert (hooked - stock).abs().max() < 1e-4
    assert (hooked - base).abs().max() > 1e-2


@pytest.mark.parametrize("name", FAMILIES)
def test_memory_presets_are_refused_and_auto_trains_without_a_plan(comfy, pack_import, name):
    memory = pack_import("nodes.memory_options")
    model = _build(name, seed=0)
    display = {"flux2": "Flux.2", "chroma": "Chroma"}[name]
    preset = next(p for p, options in memory.PRESETS.items() if options)
    with pytest.raises(ValueError, match=rf"memory plan is measured for Flux\.1 only; use auto or off for {display}"):
        memory.MemorySetup(preset, model, None, None, None, None, 64, 64, 1)
    setup = memory.MemorySetup("auto", model, None, None, None, None, 64, 64, 1)
    assert setup.plan is None and not setup.options.enabled()
