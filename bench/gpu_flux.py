"""GPU figures: seconds per step and peak GPU memory for LeapAlign, ReFL and full backprop on a
randomly initialised Flux.1-dev-sized transformer (random weights time exactly like real ones).

Setup (the paper's training setting): ComfyUI's own Flux classes in bf16, 720x720 (a 90x90 latent,
patch size 2 -> 45x45 = 2025 image tokens, plus 512 T5 tokens), N = 25 Flux-shifted Euler steps,
guidance 3.5, a rank-16 LoRA on attention + MLP, gradient checkpointing of every transformer block,
a randomly initialised Flux VAE decoder (84 M parameters, full 720x720 decode with grad) and a small
conv scorer as the reward (a real HPSv2/ViT-H reward adds its own cost on top).

    .venv/bin/python -m bench.gpu_flux                # on a CUDA machine: the real figures
    .venv/bin/python -m bench.gpu_flux --dry-run      # anywhere: same code path at toy size on CPU
    .venv/bin/python -m bench.gpu_flux --check-mechanisms   # GPU: training under dynamic VRAM / bypass LoRAs
    .venv/bin/python -m bench.gpu_flux --preset "fit 24 GB" --weights fp8   # the memory plan against a GPU

``--preset`` runs LeapAlign the way the training node does with that memory preset (the options come
from ``leapalign.memory_plan``, applied by ``nodes.memory_options``), with a random-initialised HPSv2.1
(open_clip ViT-H-14) reward instead of the conv scorer, and records the plan's predicted peak next to
``torch.cuda.max_memory_allocated``; with ``--dry-run`` it forces every option on at toy size.

Writes docs/benchmarks/gpu_flux.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

import torch  # noqa: E402

FLUX_DEV = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "vec_in_dim": 768,
    "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19,
    "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True, "guidance_embed": True,
}
FLUX_VAE = {"embed_dim": 16, "ddconfig": {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3,
                                          "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                          "attn_resolutions": [], "dropout": 0.0}}
FULL = {"flux": FLUX_DEV, "vae": FLUX_VAE, "image": 720, "steps": 25, "text_tokens": 512, "lora_rank": 16,
        "dtype": torch.bfloat16}
DRY_RUN = {"flux": {**FLUX_DEV, "hidden_size": 64, "num_heads": 2, "axes_dim": [8, 12, 12], "depth": 1,
                    "depth_single_blocks": 1, "context_in_dim": 64, "vec_in_dim": 32},
           "vae": {"embed_dim": 16, "ddconfig": {**FLUX_VAE["ddconfig"], "ch": 32, "ch_mult": [1, 1, 1, 1],
                                                 "num_res_blocks": 1}},
           "image": 64, "steps": 4, "text_tokens": 8, "lora_rank": 4, "dtype": torch.bfloat16}


def _init_(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """In-place seeded init on the module's own device (ComfyUI builds weights uninitialised)."""
    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("scale") or (name.endswith(".weight") and p.ndim == 1):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=gen)


def build(setup: dict, device: torch.device, weight_dtype: torch.dtype | None = None):
    from bench import comfy_env as env

    env.boot()
    import comfy.ldm.models.autoencoder
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models

    config = dict(setup["flux"])
    config.update(env.pack_module("nodes.comfy_compat").flux_unet_config_extras(config["axes_dim"]))  # 0.12+
    model_config = comfy.supported_models.Flux(config)
    fp8 = weight_dtype is not None and weight_dtype.itemsize == 1
    # fp8 weights: ComfyUI's manual-cast ops cast each layer to the compute dtype, as for an fp8 checkpoint
    model_config.set_inference_dtype(weight_dtype if fp8 else setup["dtype"], setup["dtype"] if fp8 else None)
    model = model_config.get_model({}, device=device)
    model.diffusion_model.to(device=device, dtype=setup["dtype"])
    _init_(model.diffusion_model, 0)
    if fp8:
        model.diffusion_model.to(dtype=weight_dtype)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    probe = comfy.ldm.models.autoencoder.AutoencoderKL(**setup["vae"])
    sd = {k: v.float() for k, v in probe.state_dict().items()}
    del probe
    gen = torch.Generator().manual_seed(1)
    for key, value in sd.items():
        sd[key] = torch.ones_like(value) if value.ndim == 1 and key.endswith("weight") else torch.randn(
            value.shape, generator=gen) * 0.02
    vae = comfy.sd.VAE(sd=sd, config={"params": setup["vae"]}, device=device)
    return patcher, vae


def measure(setup: dict, device: torch.device, reps: int, methods=("leapalign", "refl", "full_backprop"), log=print):
    from bench import comfy_env as env
    from bench.block_checkpoint import lora_for_step, seam_clone
    from leapalign.config import MethodConfig
    from leapalign.lora import LoRAAdapter, LoRAConfig
    from leapalign.methods import compute_loss

    adapters = env.pack_module("nodes.adapters")
    patcher, vae = build(setup, device)
    flux = setup["flux"]
    with env.seam_context():
        lora = LoRAAdapter(patcher.model.diffusion_model, LoRAConfig(rank=setup["lora_rank"])).to(device)
        decoder = adapters.make_decoder(vae, patcher)
    reward = env.ConvReward().to(device)
    clone = seam_clone(patcher, checkpoint_blocks=True)
    gen = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, setup["text_tokens"], flux["context_in_dim"], generator=gen),
                 {"pooled_output": torch.randn(1, flux["vec_in_dim"], generator=gen), "guidance": 3.5}]]
    latent_hw = setup["image"] // 8
    noise = torch.randn(1, flux["in_channels"], latent_hw, latent_hw, generator=gen)
    sigmas = adapters.model_sigmas(patcher, "simple", setup["steps"])
    optimizer = torch.optim.AdamW(lora.parameters(), lr=1e-5)
    results = {}
    for method in methods:
        steps = setup["steps"]
        extra = {"k": steps // 4, "j": steps // 2} if method == "leapalign" else {}
        # blocks are checkpointed already; per-call checkpointing on top would recompute twice
        config = MethodConfig(name=method, gradient_checkpointing=False, **extra)
        times = []
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for rep in range(reps + 1):
            def body(velocity, x_init, grid, inner, config=config, rep=rep):
                return compute_loss(config, velocity, decoder, reward, x_init, grid, ["a photo"],
                                    torch.Generator().manual_seed(rep)), x_init

            start = time.perf_counter()
            with env.seam_context(), lora_for_step(lora, patcher):
                result, _ = adapters.sample_with(clone, positive, noise, sigmas, body, prepare_model=env.prepare)
                result.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rep:  # the first step is warm-up
                times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        results[method] = {"seconds_per_step": statistics.median(times), "seconds": times,
                           "peak_gpu_memory_bytes": peak, "velocity_evals_with_grad": result.metrics.get("velocity_evals")}
        log(f"  gpu_flux {method}: {statistics.median(times):.2f} s/step"
            + (f", peak {peak / 2**30:.1f} GiB" if peak else ""))
    return {"setup": {k: (str(v) if k == "dtype" else v) for k, v in setup.items()},
            "image_tokens": (latent_hw // flux["patch_size"]) ** 2,
            "diffusion_params": sum(p.numel() for p in patcher.model.diffusion_model.parameters()),
            "device": str(device), "methods": results}


def _random_hps(dry_run: bool, device: torch.device):
    """HPSv2.1's architecture (open_clip ViT-H-14; a tiny one for the dry run) with random weights."""
    import open_clip

    from leapalign.rewards.hps import HPSv21Reward
    from leapalign.rewards.tiny_checkpoints import TINY_OPEN_CLIP_CONFIG

    config = dict(TINY_OPEN_CLIP_CONFIG) if dry_run else open_clip.get_model_config("ViT-H-14")
    if dry_run:  # enough layers for reward checkpointing to select them
        config["vision_cfg"] = {**config["vision_cfg"], "layers": 4}
    torch.manual_seed(0)
    model = open_clip.CLIP(**config)
    size = config["vision_cfg"]["image_size"]
    return HPSv21Reward(model, open_clip.SimpleTokenizer(context_length=77), size).to(device)


def measure_preset(setup: dict, device: torch.device, preset: str, weights: str, reps: int, dry_run: bool,
                   log=print) -> dict:
    """One LeapAlign configuration as the training node runs it with ``preset``; predicted vs measured peak."""
    from bench import comfy_env as env
    from leapalign.config import MethodConfig
    from leapalign.lora import LoRAAdapter, LoRAConfig
    from leapalign.memory_plan import MemoryOptions, plan, summary
    from leapalign.methods import compute_loss

    adapters, memory = env.pack_module("nodes.adapters"), env.pack_module("nodes.memory_options")
    weight_dtype = torch.float8_e4m3fn if weights == "fp8" else setup["dtype"]
    patcher, vae = build(setup, device, weight_dtype)
    reward = _random_hps(dry_run, device)
    flux = setup["flux"]
    with env.seam_context():
        lora = LoRAAdapter(patcher.model.diffusion_model, LoRAConfig(rank=setup["lora_rank"])).to(device)
        decoder = adapters.make_decoder(vae, patcher)
    run = memory.MemorySetup(preset, patcher, vae, reward, None, lora, setup["image"], setup["image"], 1,
                              text_tokens=setup["text_tokens"])
    if dry_run:  # every option on, so the toy run goes through each code path
        run.options = MemoryOptions(*([True] * len(vars(MemoryOptions()))))
        run.plan = plan(run.shape, run.options, run.card * 2**30 if run.card else None)
    log(summary(run.plan, run.card))
    trainer = run.training_clone(patcher, lora, adapters.training_clone)
    gen = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, setup["text_tokens"], flux["context_in_dim"], generator=gen),
                 {"pooled_output": torch.randn(1, flux["vec_in_dim"], generator=gen), "guidance": 3.5}]]
    noise = torch.randn(1, flux["in_channels"], setup["image"] // 8, setup["image"] // 8, generator=gen)
    sigmas = adapters.model_sigmas(patcher, "simple", setup["steps"])
    optimizer = torch.optim.AdamW(lora.parameters(), lr=1e-5)
    config = MethodConfig(name="leapalign", k=setup["steps"] // 4, j=setup["steps"] // 2)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with run.applied(vae, reward):
        for rep in range(reps + 1):
            def body(velocity, x_init, grid, inner, rep=rep):
                inner.diffusion_model.requires_grad_(False)
                result = compute_loss(config, velocity, decoder, reward, x_init, grid, ["a photo"],
                                      torch.Generator().manual_seed(rep))
                result.loss.backward()  # inside the sampler call, as the node does (recompute needs the model)
                return result, x_init

            start = time.perf_counter()
            with env.seam_context():
                adapters.sample_with(trainer, positive, noise, sigmas, body, prepare_model=adapters.prepare_for_autograd)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rep:
                times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    out = {"preset": preset, "weights": weights, "options": run.options.enabled(), "predicted_peak_bytes": run.plan.peak,
           "components": run.plan.components, "measured_peak_bytes": peak,
           "measured_over_predicted": peak / run.plan.peak if peak else None,
           "seconds_per_step": statistics.median(times), "seconds": times}
    log(f"  gpu_flux preset {preset}: {out['seconds_per_step']:.2f} s/step, predicted {run.plan.peak / 2**30:.2f} GiB"
        + (f", measured {peak / 2**30:.2f} GiB" if peak else ""))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="toy size on CPU (checks the code path)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--preset", help="a memory preset (leapalign.memory_plan.PRESETS): plan vs measured peak")
    parser.add_argument("--weights", choices=["fp8", "bf16"], default="fp8", help="diffusion weights with --preset")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "gpu_flux.json"))
    parser.add_argument("--check-mechanisms", action="store_true",
                        help="instead of timing: check training under dynamic VRAM and bypass LoRAs (bench/gpu_compat.py)")
    args = parser.parse_args(argv)
    if args.check_mechanisms:
        from bench.gpu_compat import check_mechanisms

        return check_mechanisms(dry_run=args.dry_run)
    from bench import comfy_env as env
    from bench.machine import machine_record, write_json

    env.set_threads()
    if args.dry_run:
        setup, device = DRY_RUN, torch.device("cpu")
    elif torch.cuda.is_available():
        setup, device = FULL, torch.device("cuda")
    else:
        print("no CUDA device: run with --dry-run for the toy-size check, or on a GPU machine for the figures",
              file=sys.stderr)
        return 2
    reps = args.reps if not args.dry_run else 1
    if args.preset:
        out = {"preset_run": measure_preset(setup, device, args.preset, args.weights, reps, args.dry_run)}
        default_out = str(REPO / "docs" / "benchmarks" / "gpu_flux.json")
        path = Path(args.out if args.out != default_out else REPO / "docs" / "benchmarks" / "gpu_flux_preset.json")
    else:
        out, path = measure(setup, device, reps), Path(args.out)
    command = "python -m bench.gpu_flux" + (" --dry-run" if args.dry_run else "")
    if args.preset:
        command += f" --preset '{args.preset}' --weights {args.weights}"
    out.update({"dry_run": args.dry_run, "machine": machine_record(), "command": command})
    write_json(path, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
