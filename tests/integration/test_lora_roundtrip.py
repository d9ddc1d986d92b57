"""The saved LoRA means the same thing to ComfyUI's stock loader and to diffusers (acceptance 2)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from family_helpers import random_lora
from family_helpers import velocity as _velocity
from torch import nn

from leapalign.lora import TARGET_PRESETS, LoRAMetadata


def _random_lora(root, rank=4, alpha=8.0, seed=3, preset="attention+mlp+modulation"):
    return random_lora(root, TARGET_PRESETS[preset], rank=rank, alpha=alpha, seed=seed)


def test_saved_lora_via_stock_loader_gives_the_trained_velocity(comfy, tiny_flux, flux_cond, pack_import, caplog):
    import folder_paths

    import nodes as comfy_nodes

    adapters = pack_import("nodes.adapters")
    lora_nodes = pack_import("nodes.lora_nodes")
    lora = _random_lora(tiny_flux.model.diffusion_model)
    trained = lora_nodes.TrainedLoRA(lora.kohya_state_dict(), lora.config, LoRAMetadata(steps=3))
    out = lora_nodes.LeapAlignSaveLoRA.execute(trained, "roundtrip/tiny", "fp32")
    name = out.result[0]
    assert (Path(folder_paths.get_folder_paths("loras")[0]) / name).is_file()
    assert name in folder_paths.get_filename_list("loras")

    with caplog.at_level(logging.WARNING):
        loaded = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(tiny_flux, name, 1.0)[0]
    assert not [r.getMessage() for r in caplog.records if "lora key not loaded" in r.getMessage()
                or "NOT LOADED" in r.getMessage()]

    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.7, 0.4])
    hooked = _velocity(pack_import, adapters.training_clone(tiny_flux, lora), flux_cond, x, sigma)
    stock = _velocity(pack_import, loaded, flux_cond, x, sigma)
    base = _velocity(pack_import, tiny_flux, flux_cond, x, sigma)
    assert (hooked - stock).abs().max() < 1e-4
    assert (hooked - base).abs().max() > 1e-2  # the LoRA does something, so the match means something
    # the training node's MODEL output applies the same patches
    node_out = pack_import("nodes.comfy_compat").apply_lora(tiny_flux, trained.state_dict)
    assert (_velocity(pack_import, node_out, flux_cond, x, sigma) - stock).abs().max() < 1e-6


def _meta_bfl_flux(width=3072, mlp=12288, double=19, single=38) -> nn.Module:
    """Module tree with BFL Flux.1 names and real sizes on the meta device (no memory)."""

    def linear(i, o):
        return nn.Linear(i, o, device="meta")

    root = nn.Module()
    root.double_blocks = nn.ModuleList()
    for _ in range(double):
        block = nn.Module()
        for stream in ("img", "txt"):
            attn, mod = nn.Module(), nn.Module()
            attn.qkv, attn.proj, mod.lin = linear(width, 3 * width), linear(width, width), linear(width, 6 * width)
            setattr(block, f"{stream}_attn", attn)
            setattr(block, f"{stream}_mod", mod)
            setattr(block, f"{stream}_mlp", nn.Sequential(linear(width, mlp), nn.GELU(), linear(mlp, width)))
        root.double_blocks.append(block)
    root.single_blocks = nn.ModuleList()
    for _ in range(single):
        block, mod = nn.Module(), nn.Module()
        block.linear1, block.linear2 = linear(width, 3 * width + mlp), linear(width + mlp, width)
        mod.lin = linear(width, 3 * width)
        block.modulation = mod
        root.single_blocks.append(block)
    return root


def test_saved_lora_converts_through_diffusers_with_every_key_used(tmp_path):
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers
    from safetensors.torch import load_file

    from leapalign.lora import save_kohya

    lora = _random_lora(_meta_bfl_flux(), rank=2, alpha=1.0, seed=1)
    path = save_kohya(lora.kohya_state_dict(), tmp_path / "flux_lora.safetensors")
    sd = load_file(str(path))
    converted = _convert_kohya_flux_lora_to_diffusers(dict(sd))
    assert len(converted) == 2 * 494  # every Flux.1 LoRA target of diffusers, A and B each

    with torch.device("meta"):
        transformer = FluxTransformer2DModel()  # Flux.1 defaults: 19 double, 38 single blocks, width 3072
    modules = dict(transformer.named_modules())
    for key, tensor in converted.items():
        assert key.startswith("transformer.")
        module_name, kind = key[len("transformer."):].rsplit(".lora_", 1)
        module = modules[module_name]
        if kind == "A.weight":
            assert tensor.shape == (2, module.in_features), key
        else:
            assert tensor.shape == (module.out_features, 2), key

    # numbers, not only names: diffusers' pieces rebuild exactly our delta-W of a fused layer
    def delta(prefix):
        return converted[f"{prefix}.lora_B.weight"] @ converted[f"{prefix}.lora_A.weight"]

    key = "double_blocks_3_img_attn_qkv"
    ours = lora.scale * lora.up[key].weight.detach() @ lora.down[key].weight.detach()
    theirs = torch.cat([delta(f"transformer.transformer_blocks.3.attn.to_{c}") for c in "qkv"])
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)
    key = "single_blocks_5_linear1"
    ours = lora.scale * lora.up[key].weight.detach() @ lora.down[key].weight.detach()
    parts = [f"transformer.single_transformer_blocks.5.attn.to_{c}" for c in "qkv"]
    theirs = torch.cat([delta(p) for p in parts] + [delta("transformer.single_transformer_blocks.5.proj_mlp")])
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", list(TARGET_PRESETS))
def test_every_preset_maps_onto_comfyui_flux_keys(comfy, tiny_flux, preset):
    import comfy.lora

    lora = _random_lora(tiny_flux.model.diffusion_model, rank=2, preset=preset)
    key_map = comfy.lora.model_lora_keys_unet(tiny_flux.model, {})
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in lora.kohya_state_dict()}
    assert names <= set(key_map)
