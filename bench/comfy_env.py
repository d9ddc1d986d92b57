"""The benchmark world: ComfyUI booted in-process, Flux models built through its own classes, and the
pack's adapters turning them into the core's velocity/decoder callables.

Two model sizes: ``tiny`` is the integration tests' tiny Flux (hidden 64, one double and one single
block); ``large`` is a wider CPU config (hidden 256, two double and two single blocks) whose
activations are large enough to show up in process memory. Both run through
``nodes.adapters.sample_with`` (ComfyUI's guider, model wrappers and patches), exactly as the
training node runs them.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "tests"):
    if str(_path) not in sys.path:
        sys.path.append(str(_path))  # last: ComfyUI's own top-level ``nodes`` must win over the pack's folder

from comfy_fixtures import TINY_FLUX_CONFIG, build_tiny_vae, flux_conditioning, seeded_state_dict  # noqa: E402

THREADS_ENV = "LEAPALIGN_BENCH_THREADS"


def set_threads() -> int:
    """One intra-op thread unless ``LEAPALIGN_BENCH_THREADS`` says otherwise.

    On a shared 2-core machine two torch threads under load run small ops up to 20x slower than one
    (spin-waiting for a core another process holds), so timings with one thread are the stable ones.
    """
    import os

    threads = int(os.environ.get(THREADS_ENV, "1"))
    torch.set_num_threads(threads)
    return threads

MODEL_CONFIGS: dict[str, dict] = {
    "tiny": {"flux": dict(TINY_FLUX_CONFIG), "latent": 16, "lora_rank": 4, "prompt_tokens": 8},
    "large": {
        "flux": {**TINY_FLUX_CONFIG, "hidden_size": 256, "num_heads": 4, "axes_dim": [16, 24, 24],
                 "depth": 2, "depth_single_blocks": 2},
        "latent": 16, "lora_rank": 16, "prompt_tokens": 16,
    },
}

_PACK = None


def boot():
    """Boot the pinned ComfyUI once (CPU unless CUDA is present) with this pack; returns the pack module."""
    global _PACK
    if _PACK is None:
        from trainer_cli.comfy_runtime import boot_comfyui

        home = Path(tempfile.mkdtemp(prefix="leapalign_bench_"))
        booted = boot_comfyui(cpu=not torch.cuda.is_available(), models_dir=home / "models",
                              output_dir=home / "output")
        _PACK = sys.modules[booted.pack_module_name]
        import comfy.utils

        comfy.utils.PROGRESS_BAR_ENABLED = False  # KSampler's tqdm bars would flood the bench log
    return _PACK


def comfy_nodes():
    """ComfyUI's top-level ``nodes`` module (KSampler etc.), after boot."""
    boot()
    return sys.modules["nodes"]


def pack_module(name: str):
    import importlib

    return importlib.import_module(f"{boot().__name__}.{name}")


def build_flux(config: dict, seed: int = 0, dtype: torch.dtype = torch.float32, std: float = 0.05):
    """A Flux ``ModelPatcher`` of ``config`` through ComfyUI's classes, with seeded weights."""
    boot()
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.Flux(dict(config))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    model.diffusion_model.load_state_dict(seeded_state_dict(model.diffusion_model, seed, std=std))
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


class ConvReward(torch.nn.Module):
    """A fixed, seeded, differentiable image scorer (a stand-in for an aesthetic model's cost and shape).

    The hinge threshold is far above any score, so every sample contributes gradient.
    """

    name = "bench_conv"
    scale = "unbounded"
    default_lambda = 100.0

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(32, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor, prompts) -> torch.Tensor:
        h = torch.nn.functional.silu(self.conv1(images * 2 - 1))
        h = torch.nn.functional.silu(self.conv2(h))
        return self.head(h.mean(dim=(2, 3))).squeeze(1)


@dataclass
class World:
    """One model size, ready to train: patcher, training clone with a LoRA, decoder, reward, conditioning."""

    name: str
    model: object
    trainer: object
    lora: object
    decoder: object
    reward: ConvReward
    positive: list
    latent_shape: tuple[int, int, int]
    prompts: list[str]
    info: dict = field(default_factory=dict)

    def noise(self, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn((len(self.prompts), *self.latent_shape), generator=gen)

    def sigmas(self, steps: int) -> torch.Tensor:
        return pack_module("nodes.adapters").model_sigmas(self.model, "simple", steps)

    def parameter_storages(self) -> set[int]:
        """Storage addresses of every weight (model, LoRA, VAE, reward): saved weights are not activations."""
        modules = [self.model.model.diffusion_model, self.lora, self.reward]
        vae = getattr(self, "_vae_module", None)
        if vae is not None:
            modules.append(vae)
        ptrs = set()
        for module in modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                ptrs.add(tensor.untyped_storage().data_ptr())
        return ptrs


def make_world(name: str, batch: int = 1, seed: int = 0) -> World:
    """Build the ``name`` model size with a LoRA attached through the pack's training clone."""
    cfg = MODEL_CONFIGS[name]
    adapters = pack_module("nodes.adapters")
    lora_mod = pack_module("leapalign.lora")
    model = build_flux(cfg["flux"], seed=seed)
    vae = build_tiny_vae(seed=seed)
    flux = cfg["flux"]
    positive = flux_conditioning(batch=batch, tokens=cfg["prompt_tokens"], seed=seed,
                                 context_dim=flux["context_in_dim"], pooled_dim=flux["vec_in_dim"])
    with torch.inference_mode(False):
        lora = lora_mod.LoRAAdapter(model.model.diffusion_model, lora_mod.LoRAConfig(rank=cfg["lora_rank"], init_seed=seed))
        with torch.no_grad():  # a trained-looking LoRA (peft init has up = 0, which zeroes some gradients)
            gen = torch.Generator().manual_seed(seed + 1)
            for p in lora.up.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
        trainer = adapters.training_clone(model, lora)
        decoder = adapters.make_decoder(vae, model)
    world = World(name=name, model=model, trainer=trainer, lora=lora, decoder=decoder, reward=ConvReward(seed),
                  positive=positive, latent_shape=(flux["in_channels"], cfg["latent"], cfg["latent"]),
                  prompts=[f"prompt {i}" for i in range(batch)],
                  info={"flux": flux, "latent_hw": cfg["latent"], "lora_rank": cfg["lora_rank"],
                        "diffusion_params": sum(p.numel() for p in model.model.diffusion_model.parameters()),
                        "lora_params": sum(p.numel() for p in lora.parameters()), "batch": batch})
    world._vae_module = vae.first_stage_model
    return world


def prepare(inner) -> None:
    pack_module("nodes.adapters").prepare_for_autograd(inner)
    inner.diffusion_model.requires_grad_(False)


def run_body(world: World, body, noise: torch.Tensor, sigmas: torch.Tensor, *, trainer: bool = True):
    """Run ``body(velocity, x_init, grid, inner)`` inside ComfyUI's sampler machinery (grad allowed)."""
    adapters = pack_module("nodes.adapters")
    seam = pack_module("nodes.autograd_seam")
    model = world.trainer if trainer else world.model
    with seam.autograd_enabled():
        result, _ = adapters.sample_with(model, world.positive, noise, sigmas, body, prepare_model=prepare)
    return result


@contextlib.contextmanager
def saved_bytes_meter(weight_storages: set[int]):
    """Count the unique storages autograd saves for backward, split into weights and activations.

    Tensors kept by non-reentrant checkpointing for recomputation are not saved through these
    hooks (the checkpoint's own hooks take precedence), so under checkpointing this counts only what
    stays outside the checkpointed calls; the process-memory column measures everything.
    """
    seen: dict[int, int] = {}
    stats = {"activation_bytes": 0, "weight_bytes": 0, "tensors": 0}

    def pack(tensor):
        stats["tensors"] += 1
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen:
            seen[ptr] = storage.nbytes()
            key = "weight_bytes" if ptr in weight_storages else "activation_bytes"
            stats[key] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield stats


@contextlib.contextmanager
def seam_context():
    """Leave inference mode and record gradients (the pack's ``autograd_enabled``)."""
    with pack_module("nodes.autograd_seam").autograd_enabled():
        yield
