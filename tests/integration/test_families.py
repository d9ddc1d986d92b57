"""The model-family layer: a loaded MODEL picks its family; unknown families are refused by name."""

from __future__ import annotations

import pytest
import torch

from leapalign.lora import TARGET_PRESETS, LoRAAdapter, LoRAConfig


def test_flux_model_is_the_flux_family_and_its_presets_are_the_legacy_ones(comfy, tiny_flux, pack_import):
    families = pack_import("nodes.families")
    family = families.family_of(tiny_flux)
    assert family.name == "flux1" and family.short == "Flux"
    assert dict(family.lora_presets) == TARGET_PRESETS  # the core's kept Flux names cannot drift
    assert families.preset_names()[:3] == list(TARGET_PRESETS)


def test_flux_export_is_the_kohya_layout(comfy, tiny_flux, pack_import):
    family = pack_import("nodes.families").family_of(tiny_flux)
    lora = LoRAAdapter(tiny_flux.model.diffusion_model, LoRAConfig(rank=2, alpha=3.0))
    with torch.no_grad():
        for up in lora.up.values():
            up.weight.normal_()
    exported = family.export_lora(lora, None, tiny_flux)
    expected = lora.kohya_state_dict()
    assert set(exported) == set(expected)
    assert all(torch.equal(exported[k], expected[k]) for k in expected)


def test_factors_fold_the_scale_into_up(comfy, tiny_flux):
    lora = LoRAAdapter(tiny_flux.model.diffusion_model, LoRAConfig(rank=2, alpha=3.0))
    with torch.no_grad():
        for up in lora.up.values():
            up.weight.normal_()
    path, (down, up) = next(iter(lora.factors().items()))
    key = next(k for k, p in lora.paths.items() if p == path)
    x = torch.randn(3, down.shape[1])
    assert torch.allclose(x @ down.T @ up.T, lora.delta(key, x), atol=1e-6)


@pytest.mark.parametrize("subclass,name", [("Chroma", "chroma"), ("Flux2", "flux2")])
def test_a_flux_subclass_of_another_family_is_not_taken_for_flux(comfy, tiny_flux, pack_import, subclass, name):
    import comfy.model_base

    if not hasattr(comfy.model_base, subclass):
        pytest.skip(f"this ComfyUI has no model_base.{subclass}")
    families = pack_import("nodes.families")
    inner = tiny_flux.model
    original = type(inner)
    inner.__class__ = getattr(comfy.model_base, subclass)  # same weights, the other family's class
    try:
        assert families.family_of(tiny_flux).name == name
    finally:
        inner.__class__ = original


def test_a_model_of_no_known_family_is_refused_naming_them(comfy, tiny_flux, pack_import):
    import comfy.model_base

    families = pack_import("nodes.families")
    inner = tiny_flux.model
    original = type(inner)
    inner.__class__ = type("Unheard", (comfy.model_base.Flux,), {})  # a Flux subclass no family names
    try:
        with pytest.raises(families.UnknownModelFamily, match=r"the model is a Unheard, not a Flux model nor SD3, "
                                                              r".*LeapAlign trains these families: Flux\.1 .*SD3 / SD3\.5"
                                                              r".*Flux\.2 \(comfy\.model_base\.Flux2\).*Chroma"):
            families.family_of(tiny_flux)
    finally:
        inner.__class__ = original


def test_non_flow_sampling_is_refused(comfy, tiny_flux, pack_import):
    import comfy.model_sampling

    families = pack_import("nodes.families")
    patched = tiny_flux.clone()

    class Eps(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    patched.add_object_patch("model_sampling", Eps())
    with pytest.raises(families.UnknownModelFamily, match=r"samples with Eps \(ModelSamplingDiscrete, EPS\), not flow matching"):
        families.family_of(patched)


def test_unknown_preset_names_the_family_and_its_presets(comfy, tiny_flux, pack_import):
    family = pack_import("nodes.families").family_of(tiny_flux)
    with pytest.raises(ValueError, match=r"preset 'nothing' is not defined for Flux\.1; choose one of \['attention'"):
        family.targets("nothing")
