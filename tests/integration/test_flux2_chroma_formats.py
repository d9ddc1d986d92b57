"""Flux.2 and Chroma specifics: diffusers' loaders take the exported LoRAs, prompt batching, Flux.2's
schedule, and loading a Flux.2 file through the stock ``UNETLoader`` where ComfyUI can detect it."""

from __future__ import annotations

import logging

import pytest
import torch
from family_helpers import random_lora
from family_helpers import velocity as _velocity


def _rebuilt_deltas(transformer, adapter, to_comfy) -> dict[str, torch.Tensor]:
    """ComfyUI module path -> sum of diffusers' delta-W pieces placed at their rows (``to_comfy(name)``)."""
    rebuilt: dict[str, list] = {}
    for name, module in transformer.named_modules():
        if not hasattr(module, "lora_A") or adapter not in module.lora_A:
            continue
        delta = module.lora_B[adapter].weight @ module.lora_A[adapter].weight * module.scaling[adapter]
        path, start = to_comfy(name)
        rebuilt.setdefault(path, []).append((start, delta))
    out = {}
    for path, pieces in rebuilt.items():
        rows = max(start + d.shape[0] for start, d in pieces)
        full = torch.zeros(rows, pieces[0][1].shape[1])
        for start, d in pieces:
            full[start:start + d.shape[0]] += d
        out[path] = full
    return out


def _loaded_everything(transformer, sd, caplog):
    from peft.utils import get_peft_model_state_dict

    assert not [r.getMessage() for r in caplog.records if "unexpected" in r.getMessage().lower()
                or "unsupported" in r.getMessage().lower()]
    loaded = get_peft_model_state_dict(transformer, adapter_name="leap")
    assert len(loaded) == len(sd)  # nothing dropped, nothing extra


# --------------------------------------------------------------------------- Flux.2

_FLUX2_DOUBLE = {"attn.to_q": ("img_attn.qkv", 0), "attn.to_k": ("img_attn.qkv", 1), "attn.to_v": ("img_attn.qkv", 2),
                 "attn.add_q_proj": ("txt_attn.qkv", 0), "attn.add_k_proj": ("txt_attn.qkv", 1),
                 "attn.add_v_proj": ("txt_attn.qkv", 2), "attn.to_out.0": ("img_attn.proj", 0),
                 "attn.to_add_out": ("txt_attn.proj", 0), "ff.linear_in": ("img_mlp.0", 0),
                 "ff.linear_out": ("img_mlp.2", 0), "ff_context.linear_in": ("txt_mlp.0", 0),
                 "ff_context.linear_out": ("txt_mlp.2", 0)}
_FLUX2_SINGLE = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2"}


def _flux2_to_comfy(name: str, hidden: int) -> tuple[str, int]:
    """diffusers' Flux.2 module name -> (ComfyUI path, first row): the converter's table, read backwards."""
    parts = name.split(".")
    if parts[0] == "transformer_blocks":
        path, third = _FLUX2_DOUBLE[".".join(parts[2:])]
        return f"double_blocks.{parts[1]}.{path}", third * hidden
    if parts[0] == "single_transformer_blocks":
        return f"single_blocks.{parts[1]}.{_FLUX2_SINGLE['.'.join(parts[2:])]}", 0
    return name.replace(".linear", ".lin"), 0  # the global modulation layers


@pytest.mark.parametrize("preset", ["attention+mlp", "attention+mlp+modulation"])
def test_flux2_lora_loads_in_diffusers_with_every_target_mapped(comfy, pack_import, caplog, preset):
    from diffusers import Flux2Pipeline, Flux2Transformer2DModel
    from family_fixtures_flux import TINY_FLUX2_CONFIG as C
    from family_fixtures_flux import build_tiny_flux2

    model = build_tiny_flux2(seed=0)
    family = pack_import("nodes.families").family_of(model)
    lora = random_lora(model.model.diffusion_model, family.targets(preset))
    sd = family.export_lora(lora, None, model)
    assert all(k.startswith("diffusion_model.") for k in sd) and not any(k.endswith(".alpha") for k in sd)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=C["in_channels"], num_layers=C["depth"], num_single_layers=C["depth_single_blocks"],
        attention_head_dim=C["hidden_size"] // C["num_heads"], num_attention_heads=C["num_heads"],
        joint_attention_dim=C["context_in_dim"], mlp_ratio=C["mlp_ratio"], axes_dims_rope=tuple(C["axes_dim"]),
        rope_theta=C["theta"], guidance_embeds=True)
    with caplog.at_level(logging.WARNING):
        converted = Flux2Pipeline.lora_state_dict(dict(sd))  # the pipeline's own conversion of the file
        transformer.load_lora_adapter(converted, prefix="transformer", adapter_name="leap")
    _loaded_everything(transformer, converted, caplog)
    rebuilt = _rebuilt_deltas(transformer, "leap", lambda n: _flux2_to_comfy(n, C["hidden_size"]))
    assert set(rebuilt) == set(lora.paths.values())
    for path, (down, up) in lora.factors().items():
        torch.testing.assert_close(rebuilt[path], up @ down, rtol=1e-5, atol=1e-6)


def test_flux2_prompts_of_different_lengths_batch_exactly(comfy, pack_import):
    """Left zero-padding to the longest prompt gives each prompt the input ``model_base.Flux2`` gives it alone."""
    from family_fixtures_flux import build_tiny_flux2, flux2_conditioning

    model = build_tiny_flux2(seed=0)
    family = pack_import("nodes.families").family_of(model)
    short, long = flux2_conditioning(tokens=5, seed=1)[0], flux2_conditioning(tokens=11, seed=2)[0]
    batch = [[family.stack_context([short[0], long[0]]), {"pooled_output": None, **family.conditioning_extras(4.0)}]]
    x = torch.randn(2, 128, 4, 4, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.8, 0.3])
    together = _velocity(pack_import, model, batch, x, sigma)
    alone = torch.cat([_velocity(pack_import, model, [c], x[i:i + 1], sigma[i:i + 1]) for i, c in enumerate((short, long))])
    assert (together - alone).abs().max() < 1e-5
    assert (alone[0] - alone[1]).abs().max() > 1e-2


def test_flux2_schedule_is_comfyuis_flux2_scheduler(comfy, pack_import):
    from comfy_extras import nodes_flux
    from family_fixtures_flux import build_tiny_flux2

    adapters = pack_import("nodes.adapters")
    flux2 = pack_import("nodes.families.flux2")
    shift = pack_import("nodes.flux_shift")
    model = build_tiny_flux2(seed=0)
    for tokens, steps in [(1024, 20), (4096, 28), (6000, 50), (64, 4)]:
        assert abs(flux2.empirical_mu(tokens, steps) - nodes_flux.compute_empirical_mu(tokens, steps)) < 1e-12
    for width, height, steps in [(1024, 1024, 20), (512, 768, 8), (64, 64, 4)]:
        trained = shift.training_model(model, "auto", width, height, flux2.FAMILY.resolution_schedule, steps)
        ours = adapters.model_sigmas(trained, "simple", steps)
        stock = nodes_flux.Flux2Scheduler.execute(steps=steps, width=width, height=height)
        stock = torch.as_tensor(stock.result[0] if hasattr(stock, "result") else stock[0]).float()
        torch.testing.assert_close(ours, stock, rtol=0, atol=2e-4)  # the simple scheduler's 1e4-entry table
    assert shift.training_model(model, "model", 1024, 1024, flux2.FAMILY.resolution_schedule, 20) is model


def test_flux2_file_loads_through_unet_loader_where_comfyui_detects_its_width(comfy, pack_import):
    """ComfyUI 0.3.75 fixes Flux.2 at 48 heads (width 6144 only); later versions infer heads as width / 128."""
    import comfy.model_detection
    import folder_paths
    from family_fixtures_flux import build_tiny_flux2, flux2_conditioning
    from safetensors.torch import save_file

    import nodes as comfy_nodes

    compat = pack_import("nodes.comfy_compat")
    model = build_tiny_flux2(seed=0)
    sd = compat.canonical_flux_state_dict(model.model.diffusion_model.state_dict())
    detected = comfy.model_detection.detect_unet_config(sd, "")
    if detected.get("num_heads") != 1:
        pytest.skip(f"this ComfyUI detects Flux.2 with {detected.get('num_heads')} heads whatever the width")
    root = folder_paths.get_folder_paths("diffusion_models")[0]
    (dest := __import__("pathlib").Path(root) / "tests").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dest / "tiny_flux2.safetensors"))
    loaded = comfy_nodes.UNETLoader().load_unet("tests/tiny_flux2.safetensors", "default")[0]
    assert pack_import("nodes.families").family_of(loaded).name == "flux2"
    x, sigma = torch.randn(1, 128, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0.6])
    cond = flux2_conditioning()
    torch.testing.assert_close(_velocity(pack_import, loaded, cond, x, sigma),
                               _velocity(pack_import, model, cond, x, sigma), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- Chroma

@pytest.mark.parametrize("preset", ["attention", "attention+mlp"])
def test_chroma_lora_loads_in_diffusers_with_every_target_mapped(comfy, pack_import, caplog, preset):
    """The file is diffusers' own layout; ComfyUI's ``flux_to_diffusers`` table places every piece back."""
    import comfy.utils
    from diffusers import ChromaPipeline, ChromaTransformer2DModel
    from family_fixtures_flux import TINY_CHROMA_CONFIG as C
    from family_fixtures_flux import build_tiny_chroma

    model = build_tiny_chroma(seed=0)
    family = pack_import("nodes.families").family_of(model)
    lora = random_lora(model.model.diffusion_model, family.targets(preset))
    sd = family.export_lora(lora, None, model)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=C["in_channels"], num_layers=C["depth"], num_single_layers=C["depth_single_blocks"],
        attention_head_dim=C["hidden_size"] // C["num_heads"], num_attention_heads=C["num_heads"],
        joint_attention_dim=C["context_in_dim"], axes_dims_rope=tuple(C["axes_dim"]),
        approximator_num_channels=C["in_dim"], approximator_hidden_dim=C["hidden_dim"],
        approximator_layers=C["n_layers"])
    with caplog.at_level(logging.WARNING):
        state = ChromaPipeline.lora_state_dict(dict(sd))  # the pipeline's loader passes the layout through
        transformer.load_lora_adapter(state, prefix="transformer", adapter_name="leap")
    assert set(state) == set(sd)
    _loaded_everything(transformer, sd, caplog)
    table = comfy.utils.flux_to_diffusers(model.model.model_config.unet_config)

    def to_comfy(name):
        key, offset = table[f"{name}.weight"] if not isinstance(table[f"{name}.weight"], str) else \
            (table[f"{name}.weight"], None)
        return key[: -len(".weight")], 0 if offset is None else offset[1]

    rebuilt = _rebuilt_deltas(transformer, "leap", to_comfy)
    assert set(rebuilt) == set(lora.paths.values())
    for path, (down, up) in lora.factors().items():
        torch.testing.assert_close(rebuilt[path], up @ down, rtol=1e-5, atol=1e-6)


def test_chroma_refuses_to_batch_prompts_of_different_lengths(comfy, pack_import):
    from family_fixtures_flux import build_tiny_chroma

    family = pack_import("nodes.families").family_of(build_tiny_chroma(seed=0))
    with pytest.raises(ValueError, match=r"different token counts \[5, 9\], which Chroma cannot batch"):
        family.stack_context([torch.zeros(1, 5, 64), torch.zeros(1, 9, 64)])
    assert family.stack_context([torch.zeros(1, 5, 64), torch.ones(1, 5, 64)]).shape == (2, 5, 64)
    assert family.conditioning_extras(3.5) == {}  # no guidance embedding: ComfyUI passes 0 to the approximator
