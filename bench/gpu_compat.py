"""GPU check: the training path under ComfyUI's GPU-only mechanisms (0.12+ with NVIDIA GPUs).

Dynamic VRAM (comfy-aimdo, ``ModelPatcherDynamic``) and LoRA "bypass" adapters only switch on with an
NVIDIA GPU, so CPU tests cannot reach them. This loads a random real-width Flux file through the stock
``UNETLoader`` (so ComfyUI picks its dynamic loading where it would for a user), adds another LoRA with
the stock ``LoraLoaderModelOnly`` and, separately, ``LoraLoaderBypassModelOnly`` (where it exists), and
checks for each MODEL:

1. value: the training path's velocity (trainable LoRA at zero) equals ComfyUI's own no-grad velocity
   of the same MODEL (what ``KSampler`` computes), so training sees the weights inference uses;
2. the other LoRA matters: the velocity differs from the bare model's;
3. gradient: a directional finite difference on the trainable LoRA agrees with autograd.

    .venv/bin/python -m bench.gpu_flux --check-mechanisms             # on a CUDA machine
    .venv/bin/python -m bench.gpu_flux --check-mechanisms --dry-run   # CPU: same code, neither mechanism

Prints one JSON line per MODEL and exits 1 if a check fails.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

REAL_WIDTH = {
    "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072,
    "mlp_ratio": 4.0, "num_heads": 24, "depth": 1, "depth_single_blocks": 1, "axes_dim": [16, 56, 56],
    "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}


DRY_RUN_WIDTH = {**REAL_WIDTH, "hidden_size": 256, "num_heads": 2}  # ComfyUI 0.14+ infers heads (hidden / 128)


def _write_files(compat, home: Path, config: dict) -> tuple[str, str]:
    """A random fp32 Flux file (BFL layout) and a random LoRA for it, in ComfyUI's folders."""
    import comfy.ldm.flux.model
    import comfy.ops
    import folder_paths
    from safetensors.torch import save_file

    from leapalign.lora import TARGET_PRESETS, LoRAAdapter, LoRAConfig

    extras = compat.flux_unet_config_extras(config["axes_dim"])
    with torch.device("meta"):
        skeleton = comfy.ldm.flux.model.Flux(operations=comfy.ops.disable_weight_init, **config, **extras)
    gen = torch.Generator().manual_seed(0)
    sd = {name: torch.ones(t.shape) if t.ndim == 1 and "norm" in name else torch.randn(t.shape, generator=gen) * 0.02
          for name, t in skeleton.state_dict().items()}
    (home / "unet").mkdir(parents=True)
    (home / "loras").mkdir()
    save_file(compat.canonical_flux_state_dict(sd), str(home / "unet" / "compat_check.safetensors"))
    other = LoRAAdapter(skeleton, LoRAConfig(rank=4, alpha=4.0, targets=TARGET_PRESETS["attention"]))
    with torch.no_grad():
        for p in other.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    save_file({k: v.contiguous() for k, v in other.kohya_state_dict().items()}, str(home / "loras" / "other.safetensors"))
    folder_paths.add_model_folder_path("diffusion_models", str(home / "unet"), is_default=True)
    folder_paths.add_model_folder_path("loras", str(home / "loras"), is_default=True)
    folder_paths.filename_list_cache.clear()
    return "compat_check.safetensors", "other.safetensors"


def _velocity(pack, model, lora, positive, x, sigma, *, train: bool):
    adapters = pack("nodes.adapters")

    def body(velocity, x_init, grid, inner):
        return velocity(x, sigma), x_init

    runner = adapters.training_clone(model, lora) if train else model
    prepare = adapters.prepare_for_autograd if train else None
    with pack("nodes.autograd_seam").autograd_enabled():
        v, _ = adapters.sample_with(runner, positive, torch.zeros_like(x), torch.cat([sigma[:1], sigma.new_zeros(1)]),
                                    body, prepare_model=prepare)
    return v


def _check_model(pack, name: str, model, bare, positive, device) -> dict:
    from leapalign.lora import TARGET_PRESETS, LoRAAdapter, LoRAConfig

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 16, 16, generator=gen).to(device)
    sigma = torch.tensor([0.6], device=device)
    weight = torch.randn(1, 16, 16, 16, generator=gen).to(device)
    lora = LoRAAdapter(model.model.diffusion_model, LoRAConfig(rank=4, alpha=4.0, targets=TARGET_PRESETS["attention+mlp"]))
    lora.to(device)
    with torch.no_grad():
        stock = _velocity(pack, model, lora, positive, x, sigma, train=False)
        plain = _velocity(pack, bare, lora, positive, x, sigma, train=False)
    trained = _velocity(pack, model, lora, positive, x, sigma, train=True)  # LoRA up weights start at zero
    value_error = float((trained.detach() - stock).abs().max() / stock.abs().max())
    other_effect = float((stock - plain).abs().max() / stock.abs().max())
    with torch.no_grad():  # a nonzero LoRA for the gradient check
        for p in lora.parameters():
            p.copy_(torch.randn(p.shape, generator=gen).to(device) * 0.02)
    params = list(lora.parameters())
    loss = (_velocity(pack, model, lora, positive, x, sigma, train=True) * weight).sum()
    grads = torch.autograd.grad(loss, params)
    directions = [torch.randn(p.shape, generator=gen).to(device) for p in params]
    predicted = sum(float((g * d).sum()) for g, d in zip(grads, directions, strict=True))
    step, values = 1e-2, []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, d in zip(params, directions, strict=True):
                p.add_(sign * step * d)
            values.append(float((_velocity(pack, model, lora, positive, x, sigma, train=True)
                                 * weight).sum()))
            for p, d in zip(params, directions, strict=True):
                p.sub_(sign * step * d)
    measured = (values[0] - values[1]) / (2 * step)
    grad_error = abs(measured - predicted) / max(abs(predicted), 1e-12)
    dynamic = getattr(model, "is_dynamic", lambda: False)()
    ok = value_error < 1e-3 and other_effect > 1e-3 and grad_error < 2e-2
    return {"model": name, "dynamic_vram": bool(dynamic), "value_rel_error": value_error,
            "other_lora_rel_effect": other_effect, "grad_rel_error": grad_error, "ok": ok}


def check_mechanisms(dry_run: bool = False) -> int:
    from bench import comfy_env as env

    if not dry_run and not torch.cuda.is_available():
        print("no CUDA device: --check-mechanisms needs an NVIDIA GPU (or --dry-run for the code path on CPU)")
        return 2
    env.boot()
    pack = env.pack_module
    compat = pack("nodes.comfy_compat")
    nodes = env.comfy_nodes()
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 finite differences need float32 matmuls
    torch.backends.cudnn.allow_tf32 = False
    unet, other = _write_files(compat, Path(tempfile.mkdtemp(prefix="leapalign_gpu_compat_")),
                               DRY_RUN_WIDTH if dry_run else REAL_WIDTH)
    (bare,) = nodes.UNETLoader().load_unet(unet, "default")
    models = {"LoraLoaderModelOnly": nodes.LoraLoaderModelOnly().load_lora_model_only(bare, other, 1.0)[0]}
    bypass = nodes.NODE_CLASS_MAPPINGS.get("LoraLoaderBypassModelOnly")
    if bypass is not None:
        node = bypass()
        models["LoraLoaderBypassModelOnly"] = getattr(node, node.FUNCTION)(bare, other, 1.0)[0]
    gen = torch.Generator().manual_seed(9)
    positive = [[torch.randn(1, 16, 4096, generator=gen), {"pooled_output": torch.randn(1, 768, generator=gen),
                                                            "guidance": 3.5}]]
    failed = 0
    for name, model in models.items():
        with pack("nodes.autograd_seam").autograd_enabled():
            result = _check_model(pack, name, model, bare, positive, device)
        result["comfyui"] = compat.comfy_version()
        print(json.dumps(result))
        failed += not result["ok"]
    return 1 if failed else 0
