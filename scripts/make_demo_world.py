"""Regenerate the digits world's shipped weights (leapalign/assets/demo/) deterministically on CPU.

    python scripts/make_demo_world.py                 # full run: writes the shipped files (~5 min)
    python scripts/make_demo_world.py --out D --set flow_steps=500   # an experiment elsewhere
    python scripts/make_demo_world.py --short --out D # the shortened run the regeneration test checks

What it does, all from seeded generators on one CPU thread:
1. initialises the toy Flux text encoders (ComfyUI's CLIP-L + T5 classes at toy width) and encodes the
   ten prompts "a handwritten zero" ... "a handwritten nine" with them;
2. pretrains the toy Flux model (ComfyUI's own Flux class) by rectified-flow matching on scikit-learn's
   bundled handwritten digits, with half of the prompts replaced by a random digit's prompt, so the
   world draws the prompted digit only about half of the time: room for alignment;
3. trains the reward CNN and the judge MLP on disjoint halves of the digits.

A full run also records a ``--short`` run's files (regeneration_sha256.json): their SHA-256 with the
identity of the machine that wrote them, and a numeric fingerprint of every tensor. The test suite
regenerates the short run and compares the hashes where the CPU/torch identity is the same, the
fingerprints within a tolerance everywhere (see leapalign/demo/regeneration.py).
"""

from __future__ import annotations

import importlib
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
from leapalign.demo import regeneration, spec  # noqa: E402
from leapalign.demo.classifiers import JudgeNet, RewardNet, accuracy, train_classifier  # noqa: E402
from leapalign.demo.codec import pixels_to_latent  # noqa: E402
from leapalign.demo.digits import load_digits_data, split_indices  # noqa: E402
from leapalign.demo.prompts import all_digit_prompts  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    """Every number that decides the shipped bits."""

    seed: int = 1234
    flow_steps: int = 2000
    flow_batch: int = 128
    flow_lr: float = 2e-3
    label_noise: float = 0.5
    reward_steps: int = 400
    judge_steps: int = 1500
    embedding_std: float = 1.0


SHORT = Recipe(flow_steps=12, flow_batch=16, reward_steps=10, judge_steps=10)


def _boot():
    from trainer_cli.comfy_runtime import boot_comfyui

    booted = boot_comfyui(cpu=True)
    pack = booted.pack_module_name
    return (importlib.import_module(f"{pack}.nodes.demo_world"), importlib.import_module(f"{pack}.nodes.autograd_seam"))


# Shared with scripts/make_shapes_world.py (and tests that load this script by path).
seeded_init = toy_build.seeded_init
sha256 = toy_build.sha256
_save = toy_build.save_safetensors


def make_text_encoder(world, recipe: Recipe, generator: torch.Generator):
    """Seeded toy text encoders, reduced to the embedding rows the prompts use; (clip, stored tensors)."""
    return toy_build.seeded_text_encoder(world, all_digit_prompts(), generator, recipe.embedding_std,
                                         (spec.CLIP_L_EMBEDDING_KEY, spec.T5_EMBEDDING_KEY))


def encode_prompts(clip) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 sequences [10, T, 64], pooled CLIP-L [10, 32]) exactly as CLIPTextEncode computes them."""
    return toy_build.encode_prompts(clip, all_digit_prompts())


def pretrain_flow(world, seam, recipe: Recipe, generator: torch.Generator, context: torch.Tensor,
                  pooled: torch.Tensor, log=print):
    """Rectified-flow pretraining of the toy Flux on the digits with ``label_noise`` of prompts randomised."""
    compat = importlib.import_module(f"{world.__package__}.comfy_compat")
    patcher = world.build_flux(None)
    net = patcher.model.diffusion_model
    net.requires_grad_(True)  # ComfyUI 0.30+ freezes a diffusion model when it builds it
    seeded_init(net, generator, zero_prefixes=("final_layer.linear",))
    data = load_digits_data()
    latents, labels = pixels_to_latent(data.images), data.labels
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.flow_lr, weight_decay=0.0)
    started = time.perf_counter()
    for step in range(recipe.flow_steps):
        toy_build.set_cosine_lr(optimizer, recipe.flow_lr, step, recipe.flow_steps)
        idx = torch.randint(0, len(data), (recipe.flow_batch,), generator=generator)
        x0, prompt = latents[idx], labels[idx].clone()
        noisy = torch.rand(recipe.flow_batch, generator=generator) < recipe.label_noise
        prompt[noisy] = torch.randint(0, 10, (int(noisy.sum()),), generator=generator)
        t = torch.rand(recipe.flow_batch, generator=generator) * 0.98 + 0.01
        noise = torch.randn(x0.shape, generator=generator)
        tb = t[:, None, None, None]
        xt = (1.0 - tb) * x0 + tb * noise
        with seam.OutOfPlaceAdds(), compat.training_mode():
            denoised = patcher.model.apply_model(xt, t, c_crossattn=context[prompt], y=pooled[prompt])
        loss = (((xt - denoised) / tb - (noise - x0)) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 500 == 0 or step + 1 == recipe.flow_steps:
            log(f"  flow step {step + 1}/{recipe.flow_steps}: loss {loss.item():.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    # Saved in the BFL key layout every supported ComfyUI reads (0.14+ names the q/k norms differently).
    return compat.canonical_flux_state_dict({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()})


def _metadata(what: str, recipe: Recipe, extra: dict) -> dict[str, str]:
    note = {"made_by": "scripts/make_demo_world.py", "what": what, "recipe": asdict(recipe),
            "data": "sklearn.datasets.load_digits (bundled), 16x16 bilinear, ink dark on white",
            "torch": torch.__version__, **extra}
    return {"leapalign.demo": json.dumps(note, sort_keys=True)}


def make_world(out: Path, recipe: Recipe, log=print) -> dict[str, str]:
    """Write the three world files into ``out``; returns their SHA-256 by file name."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    world, seam = _boot()
    generator = torch.Generator().manual_seed(recipe.seed)
    with torch.inference_mode(False):
        log("text encoders")
        clip, text_tensors = make_text_encoder(world, recipe, generator)
        with torch.no_grad():
            context, pooled = encode_prompts(clip)
        log(f"flow model ({recipe.flow_steps} steps)")
        flow = pretrain_flow(world, seam, recipe, generator, context, pooled, log=log)
        data = load_digits_data()
        split = split_indices(len(data))
        log("reward and judge classifiers")
        reward = train_classifier(RewardNet(), data.subset(split["reward"]), steps=recipe.reward_steps,
                                  seed=recipe.seed + 1)
        judge = train_classifier(JudgeNet(), data.subset(split["judge"]), steps=recipe.judge_steps,
                                 seed=recipe.seed + 2)
    test = data.subset(split["test"])
    world_tensors = {world.DIFFUSION_PREFIX + k: v for k, v in flow.items()} | text_tensors
    files = {
        spec.WORLD_FILE: (world_tensors, _metadata("toy Flux model + toy Flux text encoders", recipe, {
            "flux_config": spec.FLUX_CONFIG, "prompts": all_digit_prompts(),
            "text_embeddings": "only the rows of tokens the prompts use are stored; the rest load as zeros"})),
        spec.REWARD_FILE: (reward.state_dict(), _metadata("reward classifier (RewardNet)", recipe, {
            "trained_on": "reward split", "test_accuracy": round(accuracy(reward, test), 4)})),
        spec.JUDGE_FILE: (judge.state_dict(), _metadata("judge classifier (JudgeNet)", recipe, {
            "trained_on": "judge split", "test_accuracy": round(accuracy(judge, test), 4)})),
    }
    digests = {}
    for name, (tensors, metadata) in files.items():
        _save(tensors, out / name, metadata)
        digests[name] = sha256(out / name)
        log(f"wrote {out / name} ({(out / name).stat().st_size / 1e6:.2f} MB) sha256 {digests[name][:16]}...")
    return digests


def main(argv: list[str] | None = None) -> int:
    args, recipe = toy_build.parse_command_line(argv, __doc__.split("\n")[0], Recipe(), SHORT, spec.ASSETS_DIR)
    digests = make_world(args.out, recipe)
    if args.shipped:
        # Record the short run's digests next to the shipped files, for the regeneration test.
        import subprocess

        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, __file__, "--short", "--out", tmp], check=True)
            short = {name: sha256(Path(tmp) / name) for name in digests}
            prints = {name: regeneration.fingerprint(Path(tmp) / name) for name in digests}
        record = {"full": digests, "short": short, "short_recorded_on": regeneration.platform_identity(),
                  "short_fingerprint": prints}
        target = spec.ASSETS_DIR / spec.CHECKSUM_FILE
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
