"""Regenerate the shapes world's shipped weights (leapalign/assets/shapes/) deterministically on CPU.

    python scripts/make_shapes_world.py                  # full run: writes the shipped files (~4 min on an
                                                         # idle CPU thread, ~10 min on a busy shared one)
    python scripts/make_shapes_world.py --out D --set flow_steps=500   # an experiment elsewhere
    python scripts/make_shapes_world.py --short --out D  # the shortened run the regeneration test checks

What it does, all from seeded generators on one CPU thread:
1. initialises the toy Flux text encoders (ComfyUI's CLIP-L + T5 classes at toy width, as the digits
   world) and encodes the world's 126 prompts (GenEval's six categories) with them;
2. pretrains the toy Flux model (ComfyUI's own Flux class) by rectified-flow matching on random scenes
   that satisfy their prompt, with ``label_noise`` of the prompts replaced by a random other prompt, so
   the base model gets composition wrong often: room for alignment;
3. trains the reward's cell classifier (``leapalign.shapes.reward.CellNet``) on synthetic cells.
The judge is rule-based and has no weights.

A full run also records the SHA-256 of a ``--short`` run's files (regeneration_sha256.json).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from leapalign import toy_build  # noqa: E402
from leapalign.demo import spec as digits_spec  # noqa: E402
from leapalign.shapes import spec  # noqa: E402
from leapalign.shapes.codec import amplitudes_to_model_latent  # noqa: E402
from leapalign.shapes.prompts import all_prompts, scene_for  # noqa: E402
from leapalign.shapes.reward import train_cell_net  # noqa: E402
from leapalign.shapes.scenes import scene_amplitudes  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    """Every number that decides the shipped bits."""

    seed: int = 4321
    flow_steps: int = 2000
    flow_batch: int = 64
    flow_lr: float = 2e-3
    label_noise: float = 0.3
    reward_steps: int = 1500
    embedding_std: float = 1.0
    summary_loss_weight: float = 1.0 / spec.SUMMARY_GAIN ** 2


SHORT = Recipe(flow_steps=6, flow_batch=8, reward_steps=10)


def _boot():
    from trainer_cli.comfy_runtime import boot_comfyui

    pack = boot_comfyui(cpu=True).pack_module_name
    return importlib.import_module(f"{pack}.nodes.shapes_world"), importlib.import_module(f"{pack}.nodes.autograd_seam")


def scene_batch(prompt_ids: torch.Tensor, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
    """Model-space latents ``[B, 16, 4, 4]`` of random scenes satisfying the given prompts."""
    amps = torch.stack([scene_amplitudes(scene_for(prompts[int(i)], generator)) for i in prompt_ids])
    return amplitudes_to_model_latent(amps)


def pretrain_flow(world, seam, recipe: Recipe, generator: torch.Generator, context: torch.Tensor,
                  pooled: torch.Tensor, log=print):
    """Rectified-flow pretraining on prompt-satisfying scenes with ``label_noise`` of prompts randomised."""
    patcher = world.build_flux(None)
    net = patcher.model.diffusion_model
    toy_build.seeded_init(net, generator, zero_prefixes=("final_layer.linear",))
    prompts = all_prompts()
    # The summary channels are SUMMARY_GAIN times louder; weighted back, so that they do not drown the
    # shape channels and the prompt in the loss (their errors count as much as a shape channel's).
    channel_weight = torch.ones(1, spec.LATENT_CHANNELS, 1, 1)
    channel_weight[:, spec.USED_CHANNELS:] = recipe.summary_loss_weight
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.flow_lr, weight_decay=0.0)
    started = time.perf_counter()
    for step in range(recipe.flow_steps):
        toy_build.set_cosine_lr(optimizer, recipe.flow_lr, step, recipe.flow_steps)
        shown = torch.randint(0, len(prompts), (recipe.flow_batch,), generator=generator)
        x0 = scene_batch(shown, prompts, generator)
        told = shown.clone()
        noisy = torch.rand(recipe.flow_batch, generator=generator) < recipe.label_noise
        told[noisy] = torch.randint(0, len(prompts), (int(noisy.sum()),), generator=generator)
        t = torch.rand(recipe.flow_batch, generator=generator) * 0.98 + 0.01
        noise = torch.randn(x0.shape, generator=generator)
        tb = t[:, None, None, None]
        xt = (1.0 - tb) * x0 + tb * noise
        with seam.OutOfPlaceAdds():
            denoised = patcher.model.apply_model(xt, t, c_crossattn=context[told], y=pooled[told])
        loss = ((((xt - denoised) / tb - (noise - x0)) ** 2) * channel_weight).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 250 == 0 or step + 1 == recipe.flow_steps:
            log(f"  flow step {step + 1}/{recipe.flow_steps}: loss {loss.item():.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def _metadata(what: str, recipe: Recipe, extra: dict) -> dict[str, str]:
    note = {"made_by": "scripts/make_shapes_world.py", "what": what, "recipe": asdict(recipe),
            "torch": torch.__version__, **extra}
    return {"leapalign.shapes": json.dumps(note, sort_keys=True)}


def make_world(out: Path, recipe: Recipe, log=print) -> dict[str, str]:
    """Write the world and reward files into ``out``; returns their SHA-256 by file name."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    world, seam = _boot()
    generator = torch.Generator().manual_seed(recipe.seed)
    with torch.inference_mode(False):
        log("text encoders")
        clip, text_tensors = toy_build.seeded_text_encoder(
            world, all_prompts(), generator, recipe.embedding_std,
            (digits_spec.CLIP_L_EMBEDDING_KEY, digits_spec.T5_EMBEDDING_KEY))
        with torch.no_grad():
            context, pooled = toy_build.encode_prompts(clip, all_prompts(), tokens=spec.T5_MIN_LENGTH)
        log(f"flow model ({recipe.flow_steps} steps)")
        flow = pretrain_flow(world, seam, recipe, generator, context, pooled, log=log)
        log("reward cell classifier")
        reward = train_cell_net(recipe.reward_steps, seed=recipe.seed + 1)
    world_tensors = {world.DIFFUSION_PREFIX + k: v for k, v in flow.items()} | text_tensors
    files = {
        spec.WORLD_FILE: (world_tensors, _metadata("toy Flux model + toy Flux text encoders", recipe, {
            "flux_config": spec.FLUX_CONFIG, "prompts": len(all_prompts()),
            "text_embeddings": "only the rows of tokens the prompts use are stored; the rest load as zeros"})),
        spec.REWARD_FILE: (reward.state_dict(), _metadata("reward cell classifier (CellNet)", recipe, {})),
    }
    digests = {}
    for name, (tensors, metadata) in files.items():
        toy_build.save_safetensors(tensors, out / name, metadata)
        digests[name] = toy_build.sha256(out / name)
        log(f"wrote {out / name} ({(out / name).stat().st_size / 1e6:.2f} MB) sha256 {digests[name][:16]}...")
    return digests


def main(argv: list[str] | None = None) -> int:
    args, recipe = toy_build.parse_command_line(argv, __doc__.split("\n")[0], Recipe(), SHORT, spec.ASSETS_DIR)
    digests = make_world(args.out, recipe)
    if args.shipped:
        import subprocess

        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, __file__, "--short", "--out", tmp], check=True)
            short = {name: toy_build.sha256(Path(tmp) / name) for name in digests}
        record = {"full": digests, "short": short, "torch": torch.__version__}
        target = spec.ASSETS_DIR / spec.CHECKSUM_FILE
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
