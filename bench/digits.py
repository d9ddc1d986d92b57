"""The paper's comparison in miniature, in the demo digits world.

LeapAlign vs ReFL, DRaFT-LV, DRTune and full backprop, trained from the same pretrained digits model
with the same prompts, updates, LoRA, optimizer and reward, over several seeds; each trained model is
then sampled on fixed evaluation noise and scored by the reward net and the independent judge.
Ablations follow the paper's: alpha, one- vs two-step leap, similarity weighting, and a late-only
(k, j) range. A second comparison gives every method the same compute instead of the same number of
updates (compute counted in model-forward equivalents, see :func:`cost_per_update`).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import torch

from bench import comfy_env as env

LR = 5e-4
UPDATES = 40
BATCH = 10
LORA_RANK = 8
EVAL_PER_DIGIT = 10
EVAL_SEED = 987654
GUIDANCE = 3.5


@dataclass(frozen=True)
class Arm:
    """One configuration to train: a label, the method config's fields, and what it ablates."""

    label: str
    method: dict
    group: str
    late_only: bool = False
    updates_scale: float = 1.0
    notes: str = ""


MAIN_ARMS = [
    Arm("LeapAlign", {"name": "leapalign"}, "methods"),
    Arm("ReFL", {"name": "refl"}, "methods"),
    Arm("DRaFT-LV", {"name": "draft_lv"}, "methods"),
    Arm("DRTune", {"name": "drtune"}, "methods"),
    Arm("Full backprop", {"name": "full_backprop"}, "methods"),
]


def ablation_arms(steps: int) -> list[Arm]:
    return [
        Arm("alpha = 0", {"name": "leapalign", "alpha": 0.0}, "alpha"),
        Arm("alpha = 0.25", {"name": "leapalign", "alpha": 0.25}, "alpha"),
        Arm("alpha = 1", {"name": "leapalign", "alpha": 1.0}, "alpha"),
        Arm("one-step leap (j = N)", {"name": "leapalign", "j": steps}, "leap"),
        Arm("no similarity weighting", {"name": "leapalign", "weighting": "none"}, "weighting"),
        Arm("late-only (k, j)", {"name": "leapalign"}, "range", late_only=True),
    ]


def cost_per_update(method: dict, steps: int) -> float:
    """Model-forward equivalents per sample and update: a no-grad call = 1, a call with grad and its
    backward = 3 (the digits runs do not checkpoint, so nothing is recomputed). Expected values over
    the random grid points, with the core's defaults (ReFL's late quarter, DRaFT-LV 2 copies, DRTune
    5 steps)."""
    name = method["name"]
    if name == "leapalign":
        j = method.get("j")
        # E[#evals]: 1 if j = N else 2 (P(j = N) averaged over k uniform)
        p_one = 1.0 if j == steps else sum(1.0 / (steps - k) for k in range(steps)) / steps
        return steps + 3 * (2 - p_one)
    if name == "refl":
        low = steps - math.ceil(0.25 * steps)
        return (low + steps - 1) / 2 + 3
    if name == "draft_lv":
        return (steps - 1) + 3 * 3
    if name == "drtune":
        return steps + 3 * min(5, steps)
    if name == "full_backprop":
        return 3 * steps
    raise ValueError(name)


def assets_dir(override=None):
    from pathlib import Path

    from leapalign.demo import spec

    return Path(override) if override else spec.ASSETS_DIR


def world_files_present(directory=None) -> tuple[bool, str]:
    from leapalign.demo import spec

    folder = assets_dir(directory)
    missing = [f for f in (spec.WORLD_FILE, spec.REWARD_FILE, spec.JUDGE_FILE) if not (folder / f).is_file()]
    if missing:
        return False, f"missing in {folder}: {', '.join(missing)}"
    return True, ""


@dataclass
class DigitsWorld:
    model: object
    clip: object
    vae: object
    reward: object
    judge: object
    prompts: list[str]
    steps: int
    info: dict = field(default_factory=dict)


def load_digits_world(random_weights: bool = False, directory=None) -> DigitsWorld:
    """The shipped digits world, or (``random_weights``, for smoke tests) the same architecture untrained."""
    from leapalign.demo import spec
    from leapalign.demo.prompts import all_digit_prompts
    from leapalign.demo.reward import DigitJudge, DigitReward

    demo_world = env.pack_module("nodes.demo_world")
    if random_weights:
        from comfy_fixtures import seeded_state_dict

        model = demo_world.build_flux()
        dm = model.model.diffusion_model
        dm.load_state_dict(seeded_state_dict(dm, 0, std=0.05))
        clip, vae = demo_world.build_clip(), demo_world.build_vae()
        clip.cond_stage_model.load_state_dict(seeded_state_dict(clip.cond_stage_model, 1, std=0.05), strict=False)
        reward, judge, info = DigitReward(), DigitJudge(), {"random_weights": True}
    else:
        folder = assets_dir(directory)
        model, clip, vae, metadata = demo_world.load_world(folder / spec.WORLD_FILE)
        reward = DigitReward.from_file(folder / spec.REWARD_FILE)
        judge = DigitJudge.from_file(folder / spec.JUDGE_FILE)
        info = {"world": demo_world.world_summary(metadata), "assets": str(folder)}
    return DigitsWorld(model, clip, vae, reward, judge, all_digit_prompts(), spec.SAMPLING_STEPS, info)


def late_pair(steps: int, generator: torch.Generator) -> tuple[int, int]:
    """(k, j) with k in the last quarter of the grid points, j after it (the paper's partial range)."""
    low = steps - max(1, math.ceil(0.25 * steps))
    k = int(torch.randint(low, steps, (1,), generator=generator))
    j = int(torch.randint(k + 1, steps + 1, (1,), generator=generator))
    return k, j


class Trainer:
    """Train one arm for one seed through the pack's adapters and the core loop, then evaluate it."""

    def __init__(self, world: DigitsWorld):
        self.world = world
        self.adapters = env.pack_module("nodes.adapters")
        self.encoder = self.adapters.PromptEncoder(world.clip, GUIDANCE)
        self.latent_shape = (self.adapters.latent_channels(world.model), 4, 4)
        self.sigmas = self.adapters.model_sigmas(world.model, "simple", world.steps)
        with env.seam_context():
            self.decoder = self.adapters.make_decoder(world.vae, world.model)
        self.eval_prompts = [p for p in world.prompts for _ in range(EVAL_PER_DIGIT)]
        gen = torch.Generator().manual_seed(EVAL_SEED)
        self.eval_noise = torch.randn((len(self.eval_prompts), *self.latent_shape), generator=gen)

    def evaluate(self, model) -> dict:
        from leapalign.rollout import capture_rollout

        positive = self.encoder(self.eval_prompts)

        def body(velocity, x_init, grid, inner):
            out = capture_rollout(velocity, x_init, grid, keep=())
            return out.final, out.final

        with torch.inference_mode():
            final, _ = self.adapters.sample_with(model, positive, self.eval_noise, self.sigmas, body)
        with env.seam_context():
            images = self.decoder(final.clone())
            reward = self.world.reward(images, self.eval_prompts)
            judge = self.world.judge.correct(images, self.eval_prompts)
            reward_correct = self.world.reward.correct(images, self.eval_prompts)
        return {"reward": float(reward.mean()), "judge_accuracy": float(judge.float().mean()),
                "reward_net_accuracy": float(reward_correct.float().mean())}

    def train(self, arm: Arm, seed: int, updates: int) -> dict:
        from leapalign.config import MethodConfig, OptimConfig, TrainConfig
        from leapalign.lora import FluxLoRA, LoRAConfig
        from leapalign.methods import compute_loss
        from leapalign.train import train

        world = self.world
        with env.seam_context():
            lora = FluxLoRA(world.model.model.diffusion_model, LoRAConfig(rank=LORA_RANK, alpha=LORA_RANK, init_seed=seed))
        trainer = self.adapters.training_clone(world.model, lora)
        evals = {"grad": 0, "steps": 0}

        def loss_fn(batch):
            fields = dict(arm.method)
            generator = batch.generator()
            if arm.late_only:
                fields["k"], fields["j"] = late_pair(world.steps, generator)
            # no checkpointing: the core loop runs backward after ComfyUI's sampler returned, and a
            # checkpointed velocity call cannot be recomputed then (the guider has dropped its model);
            # the digits model is small enough that nothing needs checkpointing
            config = MethodConfig(gradient_checkpointing=False, **fields)
            positive = self.encoder(batch.prompts)
            noise = batch.noise(self.latent_shape)

            def body(velocity, x_init, grid, inner):
                return compute_loss(config, velocity, self.decoder, world.reward, x_init, grid, batch.prompts,
                                    generator), x_init

            result, _ = self.adapters.sample_with(trainer, positive, noise, self.sigmas, body, seed=batch.seed,
                                                  prepare_model=env.prepare)
            evals["grad"] += int(result.metrics.get("velocity_evals", 0))
            evals["steps"] += 1
            return result

        config = TrainConfig(steps=updates, batch_size=BATCH, seed=seed,
                             optim=OptimConfig(lr=LR, weight_decay=1e-4, grad_clip=1.0, ema_decay=None))
        start = time.perf_counter()
        with env.seam_context():
            result = train(lora.named_trainable(), loss_fn, world.prompts, config)
        seconds = time.perf_counter() - start
        # sample the trained model exactly as a user would: the exported LoRA applied as ComfyUI patches
        compat = env.pack_module("nodes.comfy_compat")
        trained = compat.apply_lora(world.model, lora.kohya_state_dict())
        metrics = self.evaluate(trained)
        history = result.history
        metrics.update({
            "arm": arm.label, "group": arm.group, "seed": seed, "updates": updates, "seconds": seconds,
            "train_reward_first": history[0].get("reward") if history else None,
            "train_reward_last5": statistics.mean(h.get("reward", float("nan")) for h in history[-5:]) if history else None,
            "grad_evals_per_update": evals["grad"] / max(1, evals["steps"]),
            "cost_per_update": cost_per_update(arm.method, world.steps),
        })
        return metrics


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Mean and sample standard deviation per arm (and per updates count)."""
    out: dict[str, dict] = {}
    for run in runs:
        out.setdefault(run["arm"], []).append(run)
    summary = {}
    for arm, items in out.items():
        row = {"n": len(items), "group": items[0]["group"], "updates": items[0]["updates"]}
        for key in ("reward", "judge_accuracy", "reward_net_accuracy", "seconds"):
            values = [r[key] for r in items]
            row[key] = statistics.mean(values)
            row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[arm] = row
    return summary


def run(seeds=(0, 1, 2), updates: int = UPDATES, ablations: bool = True, equal_compute: bool = True,
        random_weights: bool = False, directory=None, log=print) -> dict:
    ok, why = world_files_present(directory)
    if not ok and not random_weights:
        return {"available": False, "reason": f"the digits world is not usable: {why}"}
    world = load_digits_world(random_weights, directory)
    trainer = Trainer(world)
    base = trainer.evaluate(world.model)
    log(f"  digits: pretrained model reward {base['reward']:.3f}, judge accuracy {base['judge_accuracy']:.3f}")
    arms = list(MAIN_ARMS) + (ablation_arms(world.steps) if ablations else [])
    runs, compute_runs = [], []
    for arm in arms:
        for seed in seeds:
            out = trainer.train(arm, seed, updates)
            runs.append(out)
            log(f"  digits {arm.label:26s} seed {seed}: reward {out['reward']:.3f}, judge {out['judge_accuracy']:.3f} "
                f"({out['seconds']:.1f} s)")
    if equal_compute:
        budget = cost_per_update({"name": "leapalign"}, world.steps) * updates
        for arm in MAIN_ARMS[1:]:
            n = max(1, round(budget / cost_per_update(arm.method, world.steps)))
            for seed in seeds:
                out = trainer.train(arm, seed, n)
                out["arm"] = f"{arm.label} @ equal compute"
                compute_runs.append(out)
                log(f"  digits {arm.label} equal compute ({n} updates) seed {seed}: judge {out['judge_accuracy']:.3f}")
    return {
        "available": True, "world": world.info, "steps": world.steps, "seeds": list(seeds), "updates": updates,
        "batch": BATCH, "lr": LR, "lora_rank": LORA_RANK, "eval_samples": len(trainer.eval_prompts),
        "pretrained": base, "runs": runs, "summary": summarize(runs),
        "equal_compute_runs": compute_runs, "equal_compute_summary": summarize(compute_runs) if compute_runs else {},
        "cost_per_update": {a.label: cost_per_update(a.method, world.steps) for a in MAIN_ARMS},
    }
