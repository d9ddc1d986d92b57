"""Training on fp8 base weights with another LoRA already patched in (acceptance 3)."""

from __future__ import annotations

import pytest
import torch

from leapalign.lora import TARGET_PRESETS, LoRAAdapter, LoRAConfig


def _fp8_tiny_flux(seed=0):
    """The tiny Flux stored in float8_e4m3fn and computed in a cast dtype, as UNETLoader(fp8) sets it up."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from comfy_fixtures import TINY_FLUX_CONFIG, flux_config, seeded_state_dict

    config = comfy.supported_models.Flux(flux_config(TINY_FLUX_CONFIG))
    device = mm.get_torch_device()
    manual_cast = mm.unet_manual_cast(torch.float8_e4m3fn, device, config.supported_inference_dtypes)
    config.set_inference_dtype(torch.float8_e4m3fn, manual_cast)
    model = config.get_model({}, device=torch.device("cpu"))
    model.diffusion_model.load_state_dict(seeded_state_dict(model.diffusion_model, seed, std=0.05))
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())
    return patcher


def _other_lora_sd(diffusion_model):
    other = LoRAAdapter(diffusion_model, LoRAConfig(rank=2, alpha=2.0, targets=TARGET_PRESETS["attention"], init_seed=9))
    with torch.no_grad():
        for p in other.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    return other.kohya_state_dict()


def _velocity(adapters, model, positive, x, sigma):
    def body(velocity, x_init, grid, inner):
        return velocity(x, sigma), x_init

    with torch.no_grad():
        return adapters.sample_with(model, positive, torch.zeros_like(x), torch.tensor([1.0, 0.0]), body)[0]


class ColorReward:
    name, scale, default_lambda = "red", "", 0.0

    def __call__(self, images, prompts):
        target = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
        return -((images - target) ** 2).sum(dim=1).mean(dim=(1, 2))


@pytest.mark.parametrize("weights", ["fp32", "fp8_e4m3fn"])
def test_training_keeps_another_patched_lora_and_handles_fp8(comfy, tiny_vae, tiny_clip, flux_cond, pack_import,
                                                              weights):
    adapters = pack_import("nodes.adapters")
    compat = pack_import("nodes.comfy_compat")
    train_nodes = pack_import("nodes.train_nodes")
    if weights == "fp32":
        from comfy_fixtures import build_tiny_flux

        base = build_tiny_flux(seed=0)
    else:
        base = _fp8_tiny_flux(seed=0)
        assert base.model.diffusion_model.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn
    other_sd = _other_lora_sd(base.model.diffusion_model)
    with_other = compat.apply_lora(base, other_sd)

    with torch.inference_mode():  # as the executor runs nodes
        model_out, trained, metrics = train_nodes.LeapAlignTrainLoRA.execute(
            with_other, tiny_clip, tiny_vae, ColorReward(), ["a red apple", "a red car"], "leapalign", 0.5, -1.0,
            0.1, 4, 4.0, "attention+mlp", 0.05, 0.0, 1.0, 0.0, 3, 2, 1, 0, 32, 32, 4, "simple", 3.5, 0,
            f"coexist_{weights}", False).result
    history = metrics["history"]
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert all(h["grad_norm"] > 0 for h in history)
    ups = [v for k, v in trained.state_dict.items() if k.endswith("lora_up.weight")]
    assert max(float(u.abs().max()) for u in ups) > 0  # the LoRA moved away from its zero init

    x = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.8, 0.5])
    out_v = _velocity(adapters, model_out, flux_cond, x, sigma)
    without_other = _velocity(adapters, compat.apply_lora(base, trained.state_dict), flux_cond, x, sigma)
    assert (out_v - without_other).abs().max() > 1e-2  # the other LoRA still acts in the output model

    # what was trained is what is output: hooks over the other-LoRA weights == both LoRAs as ComfyUI patches
    lora = LoRAAdapter(base.model.diffusion_model, trained.config)
    lora.load_kohya_state_dict(trained.state_dict)
    hooked = _velocity(adapters, adapters.training_clone(with_other, lora), flux_cond, x, sigma)
    tolerance = 1e-4 if weights == "fp32" else 5e-2  # fp8 re-rounds the patched weight; hooks add in fp32
    assert (hooked - out_v).abs().max() < tolerance
    # and the base model itself was left untouched by training
    plain = _velocity(adapters, base, flux_cond, x, sigma)
    assert (plain - _velocity(adapters, base.clone(), flux_cond, x, sigma)).abs().max() == 0
