"""Qwen-Image, Z-Image and Lumina 2 through the family layer: rollout == KSampler, exact gradients,
LoRA files for ComfyUI's stock loader and diffusers, a training graph.

The tiny models are built through ComfyUI's own ``supported_models`` classes
(``tests/family_fixtures_dit.py``); Qwen-Image samples Wan 2.1 latents with a time axis
``[B, 16, 1, h, w]``, the Lumina 2 models image latents ``[B, 16, h, w]``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from family_helpers import family as _family
from family_helpers import family_lora as _random_lora
from family_helpers import lora_loss as _lora_loss
from family_helpers import velocity as _velocity

from leapalign.lora import LoRAAdapter, LoRAConfig, LoRAMetadata

MODELS = ["qwen_image", "z_image", "lumina2", "hidream"]
FAMILY_NAMES = {"qwen_image": "qwen_image", "z_image": "lumina2", "lumina2": "lumina2", "hidream": "hidream"}
# LoRA targets of a one-block model per preset (attention, +mlp, +modulation):
#   Qwen-Image: 8 attention projections, 2 x 2 MLP layers, 2 modulations in its one dual-stream block;
#   Z-Image / Lumina 2: qkv + out, w1-w3 in the main block and both refiners, modulation in the main
#   block and the noise refiner (the context refiner has none);
#   HiDream: q/k/v/out (+ the text stream's in the dual-stream block), w1-w3 of the shared expert, of 4
#   routed experts and of the dual-stream block's text feed-forward, one modulation per block.
TARGET_COUNTS = {"qwen_image": (8, 12, 14), "z_image": (6, 15, 17), "lumina2": (6, 15, 17), "hidream": (12, 45, 47)}
SHIFTS = {"qwen_image": 1.15, "z_image": 3.0, "lumina2": 6.0, "hidream": 1.0}


def _latent(name: str, batch: int, gen=None, dtype=torch.float32) -> torch.Tensor:
    shape = (batch, 16, 1, 8, 8) if name == "qwen_image" else (batch, 16, 8, 8)
    return torch.randn(shape, generator=gen, dtype=dtype)


@pytest.fixture(params=MODELS)
def tiny_dit(comfy, request):
    from family_fixtures_dit import build_tiny_dit

    return request.param, build_tiny_dit(request.param, seed=0)


def test_each_model_is_its_family_with_every_preset_matching(tiny_dit, pack_import):
    name, model = tiny_dit
    family = _family(pack_import, model)
    assert family.name == FAMILY_NAMES[name]
    counts = tuple(len(LoRAAdapter(model.model.diffusion_model, LoRAConfig(targets=family.targets(p), rank=2)).paths)
                   for p in ("attention", "attention+mlp", "attention+mlp+modulation"))
    assert counts == TARGET_COUNTS[name]
    shape = pack_import("nodes.adapters").sample_latent_shape(model, 64, 32, family.latent_downscale)
    assert shape == ((16, 1, 4, 8) if name == "qwen_image" else (16, 4, 8))


def test_memory_presets_are_refused_naming_flux(tiny_dit, pack_import):
    _, model = tiny_dit
    memory = pack_import("nodes.memory_options")
    with pytest.raises(ValueError, match=r"memory_preset 'fit 24 GB': the memory plan is measured for Flux\.1 only"):
        memory.MemorySetup("fit 24 GB", model, None, None, None, None, 32, 32, 1)
    assert memory.MemorySetup("auto", model, None, None, None, None, 32, 32, 1).plan is None


@pytest.mark.parametrize(("name", "template_shift"), [(m, None) for m in MODELS] + [("qwen_image", 3.1), ("hidream", 3.0)])
def test_rollout_capture_reproduces_ksampler_with_the_models_shift(comfy, pack_import, name, template_shift):
    """On the model's own sampling, and on the one ComfyUI's templates put in front of the sampler
    (``ModelSamplingAuraFlow`` for Qwen-Image and Z-Image, ``ModelSamplingSD3`` for HiDream; Z-Image's
    node is Qwen-Image's, so Qwen-Image stands for both)."""
    import comfy_extras.nodes_model_advanced as advanced
    from family_fixtures_dit import build_tiny_dit, dit_conditioning

    import nodes as comfy_nodes

    model = build_tiny_dit(name, seed=0)
    if template_shift is not None and name == "hidream":
        model = advanced.ModelSamplingSD3().patch(model, template_shift)[0]
    elif template_shift is not None:
        model = advanced.ModelSamplingAuraFlow().patch_aura(model, template_shift)[0]
    assert model.get_model_object("model_sampling").shift == (template_shift or SHIFTS[name])
    cond = dit_conditioning(name)
    latent = {"samples": torch.zeros(2, 16, 8, 8)}  # EmptySD3LatentImage's; KSampler adds the time axis itself
    reference = comfy_nodes.KSampler().sample(model, 77, 4, 1.0, "euler", "simple", cond, cond, latent)[0]["samples"]
    captured, out = pack_import("nodes.rollout_nodes").LeapAlignRolloutCapture.execute(
        model, cond, latent, 77, 4, "simple", -1, -1).result
    assert out["samples"].shape == reference.shape == ((2, 16, 1, 8, 8) if name == "qwen_image" else (2, 16, 8, 8))
    assert (out["samples"] - reference).abs().max() < 1e-5
    assert reference.abs().max() > 0.1
    expected = pack_import("nodes.adapters").model_sigmas(model, "simple", 4)
    torch.testing.assert_close(captured.rollout.sigmas, expected, rtol=0, atol=0)
    if template_shift is not None:  # sigma_1 of a 4-step simple grid: shift*t / (1 + (shift-1)*t) at t = 0.75
        assert abs(float(expected[1]) - template_shift * 0.75 / (1 + (template_shift - 1) * 0.75)) < 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_gradient_through_the_seam_matches_finite_differences(comfy, pack_import, name):
    """Autograd through ComfyUI's blocks (seam + training switches + LoRA hooks) vs central differences,
    float64, with Richardson extrapolation over steps h and 2h. ComfyUI's ``apply_model`` returns float32,
    whose rounding puts noise of order 1/h into the differences, while the extrapolated truncation
    error grows as h^4: at h = 5e-3 the measured relative errors are 2e-5 to 7e-5 (2e-4 at h = 1e-3,
    1e-4 at h = 1e-2). HiDream's top-k expert routing is piecewise constant: at h = 5e-3 a token
    changes experts (error 1e-3), at h = 1e-3 none does (error 1e-6), so it is checked at 1e-3. A
    missing seam, a hook that is not applied or a velocity read with the wrong sign gives errors of order 1. No block of these families needs a rewrite: they add out of place
    (ComfyUI's only in-place add there is the ControlNet one, which the seam covers)."""
    from family_fixtures_dit import build_tiny_dit, dit_conditioning

    model = build_tiny_dit(name, seed=0, dtype=torch.float64)
    lora = _random_lora(pack_import, model, "attention+mlp+modulation", rank=2, alpha=2.0, seed=5,
                        dtype=torch.float64, std=0.1)
    cond = dit_conditioning(name, batch=2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(6)
    x = _latent(name, 2, gen, torch.float64).requires_grad_(True)
    sigma = torch.tensor([0.7, 0.4], dtype=torch.float64)
    weight = _latent(name, 2, gen, torch.float64)
    params = list(lora.parameters())

    loss = _lora_loss(pack_import, model, lora, cond, x, sigma, weight)
    # Qwen-Image's last block computes a text stream nothing reads (to_add_out, txt_mlp), and a HiDream
    # expert no token is routed to computes nothing: no gradient there.
    grads = torch.autograd.grad(loss, params + [x], allow_unused=name in ("qwen_image", "hidream"))
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, params + [x], strict=True)]

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

    step = 1e-3 if name == "hidream" else 5e-3  # HiDream: stay inside one top-k routing of its experts
    directions = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in params + [x]]
    predicted = sum(float((g * d).sum()) for g, d in zip(grads, directions, strict=True))
    central = [(shifted_loss(directions, h) - shifted_loss(directions, -h)) / (2 * h) for h in (step, 2 * step)]
    measured = (4 * central[0] - central[1]) / 3
    assert abs(predicted) > 1e-3, "the check needs a gradient that is not ~0"
    assert abs(measured - predicted) <= 3e-4 * abs(predicted), (measured, predicted)


@pytest.mark.parametrize("preset", ["attention+mlp+modulation"])  # every target name the presets have
def test_saved_lora_via_stock_loader_gives_the_trained_velocity(tiny_dit, pack_import, caplog, preset):
    """Every tensor of the file is consumed by ``LoraLoaderModelOnly`` (no "lora key not loaded"), and the
    stock-patched model's velocity equals the velocity with the trained adapter hooked in."""
    import folder_paths
    from family_fixtures_dit import dit_conditioning

    import nodes as comfy_nodes

    name, model = tiny_dit
    family = _family(pack_import, model)
    lora = _random_lora(pack_import, model, preset)
    sd = family.export_lora(lora, None, model)
    prefix = {"qwen_image": "transformer.transformer_blocks.", "hidream": "transformer."}.get(name, "diffusion_model.")
    assert sd and all(k.startswith(prefix) for k in sd)
    split_qkv = name == "z_image"  # diffusers' Z-Image names: q, k, v apart
    assert len(sd) == 2 * (len(lora.paths) + (2 * 3 if split_qkv else 0))
    lora_nodes = pack_import("nodes.lora_nodes")
    trained = lora_nodes.TrainedLoRA(sd, lora.config, LoRAMetadata(steps=1, base_model_version=family.name))
    file_name = lora_nodes.LeapAlignSaveLoRA.execute(trained, f"{name}/{preset}", "fp32").result[0]
    assert file_name in folder_paths.get_filename_list("loras")

    with caplog.at_level(logging.WARNING):
        loaded = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, file_name, 1.0)[0]
    assert not [r.getMessage() for r in caplog.records if "lora key not loaded" in r.getMessage()
                or "NOT LOADED" in r.getMessage()]
    x = _latent(name, 2, torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.7, 0.4])
    cond = dit_conditioning(name, batch=2)
    hooked = _velocity(pack_import, pack_import("nodes.adapters").training_clone(model, lora), cond, x, sigma)
    stock = _velocity(pack_import, loaded, cond, x, sigma)
    base = _velocity(pack_import, model, cond, x, sigma)
    assert (hooked - stock).abs().max() < 1e-4
    assert (hooked - base).abs().max() > 1e-2


def _diffusers_model(name: str):
    from family_fixtures_dit import TINY_HIDREAM_CONFIG as H
    from family_fixtures_dit import TINY_QWEN_IMAGE_CONFIG as Q
    from family_fixtures_dit import TINY_ZIMAGE_CONFIG as Z

    if name == "hidream":
        from diffusers import HiDreamImagePipeline, HiDreamImageTransformer2DModel

        return HiDreamImagePipeline, HiDreamImageTransformer2DModel(**{
            k: tuple(v) if k in ("axes_dims_rope", "max_resolution") else v for k, v in H.items() if k != "image_model"})

    if name == "qwen_image":
        from diffusers import QwenImagePipeline, QwenImageTransformer2DModel

        return QwenImagePipeline, QwenImageTransformer2DModel(
            patch_size=2, in_channels=Q["in_channels"], out_channels=Q["out_channels"], num_layers=Q["num_layers"],
            attention_head_dim=Q["attention_head_dim"], num_attention_heads=Q["num_attention_heads"],
            joint_attention_dim=Q["joint_attention_dim"], axes_dims_rope=tuple(Q["axes_dims_rope"]))
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

    return ZImagePipeline, ZImageTransformer2DModel(
        in_channels=Z["in_channels"], dim=Z["dim"], n_layers=Z["n_layers"], n_refiner_layers=Z["n_refiner_layers"],
        n_heads=Z["n_heads"], n_kv_heads=Z["n_kv_heads"], cap_feat_dim=Z["cap_feat_dim"], axes_dims=Z["axes_dims"],
        axes_lens=Z["axes_lens"])


def _comfy_target(name: str, unet_config, diffusers_module: str):
    """ComfyUI weight path and row slice (or None) a diffusers module's LoRA lands on."""
    if name != "z_image":
        return diffusers_module, None
    import comfy.utils

    target = comfy.utils.z_image_to_diffusers(unet_config)[f"{diffusers_module}.weight"]
    key, offset = (target, None) if isinstance(target, str) else (target[0], target[1])
    return key[: -len(".weight")], offset


@pytest.mark.parametrize("name", ["qwen_image", "z_image", "hidream"])
def test_saved_lora_loads_in_diffusers_with_every_target_mapped(comfy, pack_import, name, caplog):
    """The pipeline's own ``lora_state_dict`` + ``load_lora_adapter`` take every tensor, and the
    per-module weight changes diffusers applies rebuild exactly our delta-W of every ComfyUI layer."""
    from family_fixtures_dit import build_tiny_dit
    from peft.utils import get_peft_model_state_dict

    model = build_tiny_dit(name, seed=0)
    family = _family(pack_import, model)
    lora = _random_lora(pack_import, model, "attention+mlp+modulation")
    sd = family.export_lora(lora, None, model)
    pipeline, transformer = _diffusers_model(name)
    state = pipeline.lora_state_dict(dict(sd))
    state = state[0] if isinstance(state, tuple) else state
    prefix = "transformer" if any(k.startswith("transformer.") for k in state) else None
    with caplog.at_level(logging.WARNING):
        transformer.load_lora_adapter(dict(state), prefix=prefix, adapter_name="leap")
    assert not [r.getMessage() for r in caplog.records if "unexpected" in r.getMessage().lower()
                or "missing" in r.getMessage().lower()]
    loaded = get_peft_model_state_dict(transformer, adapter_name="leap")
    assert len(loaded) == len(sd)  # nothing dropped, nothing extra

    unet_config = model.model.model_config.unet_config
    factors = lora.factors()
    rebuilt: dict[str, torch.Tensor] = {}
    for module_name, module in transformer.named_modules():
        if not hasattr(module, "lora_A") or "leap" not in module.lora_A:
            continue
        delta = module.lora_B["leap"].weight @ module.lora_A["leap"].weight * module.scaling["leap"]
        path, offset = _comfy_target(name, unet_config, module_name)
        full = rebuilt.setdefault(path, torch.zeros(factors[path][1].shape[0], factors[path][0].shape[1]))
        (full.narrow(*offset) if offset is not None else full).add_(delta.detach())
    assert set(rebuilt) == set(lora.paths.values())
    for path, (down, up) in factors.items():
        torch.testing.assert_close(rebuilt[path], up @ down, rtol=1e-5, atol=1e-6)


def _train_graph(name: str, run_name: str, prefix: str) -> dict:
    return {
        "1": {"class_type": "TinyDiTModelLoader", "inputs": {"model": name, "seed": 0}},
        "2": {"class_type": "TinyHiDreamCLIPLoader" if name == "hidream" else "TinyCLIPLoader", "inputs": {"seed": 0}},
        "3": {"class_type": "TinyVAELoader", "inputs": {"seed": 0, "weight_std": 0.2}},
        "4": {"class_type": "LeapAlignRewardLoader",
              "inputs": {"kind": "builtin_color_target", "model_file": "(none: built-in reward)",
                         "precision": "float32", "target_color": "1.0, 0.0, 0.0"}},
        "5": {"class_type": "LeapAlignPromptList", "inputs": {"text": "a red apple\na red apple on a table", "file": ""}},
        "6": {"class_type": "LeapAlignTrainLoRA", "inputs": {
            "model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0], "reward": ["4", 0], "prompts": ["5", 0],
            "method": "leapalign", "alpha": 0.5, "hinge_lambda": -1.0, "tau": 0.1, "lora_rank": 4,
            "lora_alpha": 4.0, "lora_targets": "attention+mlp", "learning_rate": 0.05, "weight_decay": 0.0,
            "grad_clip": 1.0, "ema_decay": 0.0, "steps": 2, "batch_size": 2, "grad_accumulation": 1, "seed": 0,
            "width": 32, "height": 32, "sampling_steps": 4, "scheduler": "simple", "guidance": 3.5,
            "checkpoint_every": 0, "run_name": run_name, "resume": False}},
        "7": {"class_type": "LeapAlignSaveLoRA", "inputs": {"lora": ["6", 1], "filename_prefix": prefix, "dtype": "fp32"}},
    }


@pytest.mark.parametrize("name", ["qwen_image", "z_image", "hidream"])
def test_training_graph_trains_a_lora(comfy, name):
    """Two LeapAlign steps through ComfyUI's executor (Qwen-Image: latents with a time axis decoded by an
    image VAE frame by frame; HiDream: ComfyUI's HiDream text encoder, whose Llama hidden states the
    prompt encoder carries): finite losses, a LoRA file in the family's layout with updated weights."""
    import folder_paths
    from safetensors import safe_open
    from safetensors.torch import load

    from trainer_cli.comfy_runtime import execute_prompt

    result = execute_prompt(_train_graph(name, f"dit_{name}", f"tests/dit_{name}"))
    assert result.success, result.error
    lora_dir = Path(folder_paths.get_folder_paths("loras")[0])
    (path,) = sorted((lora_dir / "tests").glob(f"dit_{name}_*.safetensors"))
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["ss_base_model_version"] == FAMILY_NAMES[name]
    state = load(path.read_bytes())
    ups = [v for k, v in state.items() if k.endswith("lora_B.weight")]
    assert ups and all(torch.isfinite(v).all() for v in ups)
    assert max(float(v.abs().max()) for v in ups) > 0  # lora_B starts at zero: the steps updated it
    metrics = Path(folder_paths.get_output_directory()) / "leapalign" / f"dit_{name}" / "metrics.jsonl"
    losses = [json.loads(line)["loss"] for line in metrics.read_text(encoding="utf-8").splitlines() if '"loss"' in line]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), losses


def test_prompt_encoder_carries_the_encoder_outputs_the_family_reads(comfy, pack_import, tiny_clip):
    """HiDream reads the Llama hidden states (``conditioning_llama3``) besides the T5 sequence and the
    pooled output: the prompt encoder stacks them per prompt, and a text encoder without them is refused."""
    from family_fixtures_dit import build_tiny_hidream_clip

    adapters = pack_import("nodes.adapters")
    family = pack_import("nodes.families.hidream").FAMILY
    clip = build_tiny_hidream_clip(seed=0)
    (tensor, extras), = adapters.PromptEncoder(clip, family=family)(["a red apple", "a green pear"])
    single = clip.encode_from_tokens_scheduled(clip.tokenize("a green pear"))[0][1]["conditioning_llama3"]
    assert tensor.shape[0] == 2 and extras["pooled_output"].shape == (2, 32 + 1280)
    assert extras["conditioning_llama3"].shape == (2, *single.shape[1:])
    torch.testing.assert_close(extras["pooled_output"][1:], clip.encode_from_tokens_scheduled(
        clip.tokenize("a green pear"))[0][1]["pooled_output"], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"the text encoder gives no conditioning_llama3, which HiDream-I1 needs"):
        adapters.PromptEncoder(tiny_clip, family=family)(["a red apple"])


def test_prompt_encoder_refuses_encoder_outputs_that_do_not_stack(comfy, pack_import):
    adapters = pack_import("nodes.adapters")
    family = pack_import("nodes.families.hidream").FAMILY

    class LengthClip:  # Llama states as long as the prompt, as with prompts over the tokenizer's 128 tokens
        def tokenize(self, text):
            return text

        def encode_from_tokens_scheduled(self, text):
            return [[torch.zeros(1, 4, 8), {"pooled_output": torch.zeros(1, 3),
                                            "conditioning_llama3": torch.zeros(1, 2, len(text), 5)}]]

    (_, extras), = adapters.PromptEncoder(LengthClip(), family=family)(["ab", "cd"])
    assert extras["conditioning_llama3"].shape == (2, 2, 2, 5)
    with pytest.raises(ValueError, match=r"give conditioning_llama3 of different shapes \[\(2, 2, 5\), \(2, 3, 5\)\]"):
        adapters.PromptEncoder(LengthClip(), family=family)(["ab", "abc"])
