"""An SD3.5 Medium-layout file through the stock UNETLoader, trained for one step.

A real-width single-block SD3.5 file cannot be made: ComfyUI derives the MMDiT's depth (and so its
block count) from its width (``depth = hidden / 64``; SD3.5 Medium 1536 -> 24 blocks, Large 2432 -> 38),
so a file with fewer blocks loads with the missing blocks uninitialised, and a real-width file is the
whole 2.5 B-parameter model. This file therefore has SD3.5 Medium's key layout and every real
input width (4096-wide text sequence, 2048-wide pooled vector, 384 x 384 position table, MMDiT-X
``attn2`` in block 0, RMS q/k norms) at width 128 (depth 2), random weights, bf16.
"""

from __future__ import annotations

import pytest
import torch

MEDIUM_LAYOUT = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
    "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
    "num_patches": 384 * 384, "pos_embed_max_size": 384, "pos_embed_scaling_factor": None,
    "qk_norm": "rms", "x_block_self_attn_layers": [0],
}


@pytest.fixture(scope="module")
def unet_file(comfy, tmp_path_factory):
    import comfy.supported_models
    import folder_paths
    from safetensors.torch import save_file

    config = comfy.supported_models.SD3(dict(MEDIUM_LAYOUT))
    with torch.device("meta"):
        skeleton = config.get_model({}).diffusion_model
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for name, tensor in skeleton.state_dict().items():
        if tensor.ndim == 1 and ("ln_" in name or "norm" in name):
            sd[name] = torch.ones(tensor.shape, dtype=torch.bfloat16)
        else:
            sd[name] = (torch.randn(tensor.shape, generator=gen) * 0.02).to(torch.bfloat16)
    folder = tmp_path_factory.mktemp("sd3_unet")
    save_file(sd, str(folder / "sd35_medium_layout_test.safetensors"))
    folder_paths.add_model_folder_path("diffusion_models", str(folder), is_default=True)
    folder_paths.filename_list_cache.clear()
    return "sd35_medium_layout_test.safetensors", set(sd)


class SD3TextEncoderStandIn:
    """Stands in for TripleCLIPLoader's CLIP-L + CLIP-G + T5-XXL: SD3-shaped outputs (154 x 4096, pooled 2048)."""

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        gen = torch.Generator().manual_seed(len(tokens))
        return [[torch.randn(1, 154, 4096, generator=gen), {"pooled_output": torch.randn(1, 2048, generator=gen)}]]


def test_sd35_medium_layout_file_loads_with_unetloader_and_trains_one_step(comfy, unet_file, tiny_vae, pack_import,
                                                                          caplog):
    import logging

    import nodes as comfy_nodes
    from leapalign.rewards.builtin import BrightnessReward

    name, keys = unet_file
    with caplog.at_level(logging.INFO), torch.inference_mode():
        model = comfy_nodes.UNETLoader().load_unet(name, "default")[0]
    assert not [r.getMessage() for r in caplog.records if any(w in r.getMessage().lower()
                                                                for w in ("missing", "unexpected", "left over"))]
    assert pack_import("nodes.families").family_of(model).name == "sd3"
    unet_config = model.model.model_config.unet_config
    assert unet_config["x_block_self_attn_layers"] == [0] and unet_config["qk_norm"] == "rms"
    assert set(model.model.diffusion_model.state_dict()) == keys  # the file's layout is the model's

    with torch.inference_mode():
        _, trained, metrics = pack_import("nodes.train_nodes").LeapAlignTrainLoRA.execute(
            model, SD3TextEncoderStandIn(), tiny_vae, BrightnessReward(), ["a photo of a cat"], "leapalign", 0.5,
            -1.0, 0.1, 4, 4.0, "attention+mlp", 1e-4, 0.0, 1.0, 0.0, 1, 1, 1, 0, 64, 64, 2, "simple", 3.5, 0,
            "sd35_layout", False).result
    step = metrics["history"][0]
    assert torch.isfinite(torch.tensor(step["loss"])) and step["loss"] > 0
    assert step["grad_norm"] > 0 and not step["skipped"]
    ups = [v for k, v in trained.state_dict.items() if k.endswith("lora_B.weight")]
    assert ups and max(float(u.abs().max()) for u in ups) > 0
