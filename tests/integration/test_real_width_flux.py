"""The real loading path: a real-width random Flux file through the stock UNETLoader, one training step (acceptance 7).

0.3.75 detects Flux only at hidden 3072 (24 heads), so the file has Flux.1's width with one double and
one single block (about 531 M parameters, 1 GB in bf16), written to a temp folder per test session.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

REAL_WIDTH = {
    "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072,
    "mlp_ratio": 4.0, "num_heads": 24, "depth": 1, "depth_single_blocks": 1, "axes_dim": [16, 56, 56],
    "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}


@pytest.fixture(scope="module")
def unet_file(comfy, tmp_path_factory, pack_import):
    """A random real-width Flux state dict in BFL key layout, bf16 safetensors, in a unet folder."""
    import comfy.ldm.flux.model
    import comfy.ops
    import folder_paths
    from safetensors.torch import save_file

    extras = pack_import("nodes.comfy_compat").flux_unet_config_extras(REAL_WIDTH["axes_dim"])
    with torch.device("meta"):
        skeleton = comfy.ldm.flux.model.Flux(operations=comfy.ops.disable_weight_init, **REAL_WIDTH, **extras)
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for name, tensor in skeleton.state_dict().items():
        if name.endswith("scale") or tensor.ndim == 1 and ("norm" in name):
            sd[name] = torch.ones(tensor.shape, dtype=torch.bfloat16)
        else:
            sd[name] = (torch.randn(tensor.shape, generator=gen) * 0.02).to(torch.bfloat16)
    folder = tmp_path_factory.mktemp("unet")
    save_file(sd, str(folder / "flux_real_width_test.safetensors"))
    del sd
    folder_paths.add_model_folder_path("diffusion_models", str(folder), is_default=True)
    folder_paths.filename_list_cache.clear()
    return "flux_real_width_test.safetensors"


class RealWidthTextEncoder:
    """Stands in for DualCLIPLoader's CLIP-L + T5-XXL (which cannot be built small): Flux.1-shaped outputs."""

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        gen = torch.Generator().manual_seed(len(tokens))
        return [[torch.randn(1, 16, 4096, generator=gen), {"pooled_output": torch.randn(1, 768, generator=gen)}]]


@pytest.mark.parametrize("weight_dtype,other_lora", [("default", False), ("fp8_e4m3fn", True)])
def test_one_training_step_on_a_real_width_flux_loaded_by_unetloader(comfy, unet_file, tiny_vae, pack_import,
                                                                      weight_dtype, other_lora):
    import nodes as comfy_nodes
    from leapalign.lora import TARGET_PRESETS, LoRAAdapter, LoRAConfig
    from leapalign.rewards.builtin import BrightnessReward

    train_nodes = pack_import("nodes.train_nodes")
    compat = pack_import("nodes.comfy_compat")
    with torch.inference_mode():  # as the executor runs nodes
        model = comfy_nodes.UNETLoader().load_unet(unet_file, weight_dtype)[0]
    inner = model.model.diffusion_model
    assert type(model.model).__name__ == "Flux" and inner.double_blocks[0].img_attn.qkv.in_features == 3072
    if weight_dtype == "fp8_e4m3fn":
        assert inner.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn
    if other_lora:
        other = LoRAAdapter(inner, LoRAConfig(rank=2, alpha=2.0, targets=TARGET_PRESETS["attention"], init_seed=5))
        with torch.no_grad():
            for p in other.parameters():
                p.normal_(0, 0.01)
        model = compat.apply_lora(model, other.kohya_state_dict())

    with torch.inference_mode():
        _, trained, metrics = train_nodes.LeapAlignTrainLoRA.execute(
            model, RealWidthTextEncoder(), tiny_vae, BrightnessReward(), ["a photo of a cat"], "leapalign", 0.5, -1.0,
            0.1, 4, 4.0, "attention+mlp", 1e-4, 0.0, 1.0, 0.0, 1, 1, 1, 0, 64, 64, 2, "simple", 3.5, 0,
            f"real_width_{weight_dtype}", False).result
    step = metrics["history"][0]
    assert torch.isfinite(torch.tensor(step["loss"])) and step["loss"] > 0
    assert step["grad_norm"] > 0 and not step["skipped"]
    ups = [v for k, v in trained.state_dict.items() if k.endswith("lora_up.weight")]
    assert max(float(u.abs().max()) for u in ups) > 0  # the step moved the LoRA off its zero init
