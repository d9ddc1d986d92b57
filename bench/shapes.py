"""The paper's comparison in the shapes world (``leapalign/assets/shapes``): GenEval in miniature.

Same protocol as ``bench/digits.py`` (whose trainer, cost model, summaries and verdicts it reuses):
every method and the paper's ablations trained from the same pretrained model with the same prompts,
updates, LoRA, optimizer and reward, over several seeds, then evaluated as ``LeapAlign Shapes
Evaluate`` does (stock KSampler on held-out noises, every prompt) and scored by the rule-based judge
per GenEval category, with the Fréchet distance to real scenes and intra-prompt diversity next to it.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path

import torch

from bench import comfy_env as env
from bench import digits

LR = 1e-3
UPDATES = 40
SEEDS = (0, 1, 2, 3, 4)


def assets_dir(override=None) -> Path:
    from leapalign.shapes import spec

    return Path(override) if override else spec.ASSETS_DIR


def world_files_present(directory=None) -> tuple[bool, str]:
    from leapalign.shapes import spec

    folder = assets_dir(directory)
    missing = [f for f in (spec.WORLD_FILE, spec.REWARD_FILE) if not (folder / f).is_file()]
    return (False, f"missing in {folder}: {', '.join(missing)}") if missing else (True, "")


def load_shapes_world(directory=None) -> digits.DigitsWorld:
    """The shipped shapes world (or the one in ``directory``) in the digits bench's world record."""
    from leapalign.shapes import spec
    from leapalign.shapes.prompts import all_prompts
    from leapalign.shapes.reward import ShapesReward

    folder = assets_dir(directory)
    shapes_world = env.pack_module("nodes.shapes_world")
    with torch.inference_mode(False):
        model, clip, vae, meta = shapes_world.load_world(folder / spec.WORLD_FILE)
        reward = ShapesReward.from_file(folder / spec.REWARD_FILE)
    info = {"assets": str(folder), "sha256": {f: hashlib.sha256((folder / f).read_bytes()).hexdigest()[:16]
                                              for f in (spec.WORLD_FILE, spec.REWARD_FILE)},
            "recipe": json.loads(meta.get("leapalign.shapes", "{}")).get("recipe", {})}
    return digits.DigitsWorld(model, clip, vae, reward, None, all_prompts(), spec.SAMPLING_STEPS, info)


class ShapesTrainer(digits.Trainer):
    """The digits bench's trainer with the shapes world's latent size and GenEval-style evaluation."""

    def __init__(self, world, samples_per_prompt: int):
        from leapalign.shapes import spec

        super().__init__(world, samples_per_prompt, image_size=spec.IMAGE_SIZE)
        self.shapes_nodes = env.pack_module("nodes.shapes_nodes")

    def evaluate(self, model) -> dict:
        from leapalign.shapes.evaluate import EVAL_SEED

        w = self.world
        with torch.inference_mode():
            _, score = self.shapes_nodes.evaluate_model(model, w.clip, w.vae, w.reward, self.samples_per_digit,
                                                        EVAL_SEED, w.steps)
        out = {"reward": score.mean_reward, "judge_accuracy": score.overall,
               "reward_net_accuracy": score.reward_accuracy, "fd": score.quality["fd"],
               "diversity_ratio": score.quality["diversity_ratio"]}
        out.update({f"cat_{k}": v for k, v in score.per_category.items()})
        return out


_WORKER: ShapesTrainer | None = None


def _init_worker(directory, samples_per_prompt: int) -> None:
    global _WORKER
    env.set_threads()
    _WORKER = ShapesTrainer(load_shapes_world(directory), samples_per_prompt)


def _indexed_job(item: tuple) -> tuple[int, dict]:
    index, (arm, seed, updates, lr, label) = item
    out = _WORKER.train(arm, seed, updates, lr)
    out["arm"] = label
    return index, out


def summarize(runs: list[dict]) -> dict[str, dict]:
    """The digits summary plus the per-category accuracies (mean and sd per arm)."""
    summary = digits.summarize(runs)
    for arm, row in summary.items():
        items = [r for r in runs if r["arm"] == arm]
        for key in [k for k in items[0] if k.startswith("cat_")]:
            values = [r[key] for r in items]
            row[key] = statistics.mean(values)
            row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return summary


def run_jobs(jobs: list[tuple], steps: int, directory, samples_per_prompt: int, workers: int, log=print) -> list[dict]:
    """Train and evaluate ``(arm, seed, updates, lr, label)`` jobs in forked workers, slowest first."""
    import multiprocessing

    order = sorted(range(len(jobs)), key=lambda i: -jobs[i][2] * digits.cost_per_update(jobs[i][0].method, steps))
    start, results = time.perf_counter(), [None] * len(jobs)
    with multiprocessing.get_context("fork").Pool(processes=workers, initializer=_init_worker,
                                                  initargs=(directory, samples_per_prompt)) as pool:
        for index, out in pool.imap_unordered(_indexed_job, [(i, jobs[i]) for i in order]):
            results[index] = out
            log(f"  shapes {out['arm']:30s} seed {out['seed']} ({out['updates']:3d} updates): reward "
                f"{out['reward']:.3f}, overall {out['judge_accuracy']:.3f}, fd {out['fd']:.2f} "
                f"(t={time.perf_counter() - start:.0f} s)")
    return results


BUDGET_ARMS = ("LeapAlign", "ReFL", "late-only (k, j)")


def budget_check(seeds=(0, 1), updates: int = 36, lr: float = LR, directory=None, samples_per_prompt: int = 2,
                 workers: int = 2, log=print) -> dict:
    """Does a longer run change LeapAlign vs ReFL (and full-range vs late-only (k, j))? Fewer seeds, more updates."""
    from leapalign.shapes import spec

    arms = {a.label: a for a in [*digits.MAIN_ARMS, *digits.ablation_arms(spec.SAMPLING_STEPS)]}
    jobs = [(arms[label], seed, updates, lr, label) for label in BUDGET_ARMS for seed in seeds]
    runs = run_jobs(jobs, spec.SAMPLING_STEPS, directory, samples_per_prompt, workers, log)
    return {"seeds": list(seeds), "updates": updates, "summary": summarize(runs), "runs": runs}


def run(seeds=SEEDS, updates: int = UPDATES, lr: float = LR, ablations: bool = True, equal_compute: bool = True,
        directory=None, samples_per_prompt: int = 2, workers: int = 2, log=print) -> dict:
    ok, why = world_files_present(directory)
    if not ok:
        return {"available": False, "reason": f"the shapes world is not usable: {why}"}
    env.set_threads()
    world = load_shapes_world(directory)
    probe = ShapesTrainer(world, samples_per_prompt)
    base = probe.evaluate(world.model)
    log(f"  shapes: pretrained model reward {base['reward']:.3f}, GenEval-style overall {base['judge_accuracy']:.3f}")
    arms = list(digits.MAIN_ARMS) + (digits.ablation_arms(world.steps) if ablations else [])
    jobs = [(arm, seed, updates, lr, arm.label) for arm in arms for seed in seeds]
    if equal_compute:
        jobs += [(arm, seed, digits.equal_compute_updates(arm, world.steps, updates), lr,
                  f"{arm.label} @ equal compute") for arm in digits.MAIN_ARMS[1:] for seed in seeds]
    results = run_jobs(jobs, world.steps, directory, samples_per_prompt, workers, log)
    runs = [r for r in results if not r["arm"].endswith("@ equal compute")]
    compute_runs = [r for r in results if r["arm"].endswith("@ equal compute")]
    return {
        "available": True, "world": world.info, "steps": world.steps, "seeds": list(seeds), "updates": updates,
        "batch": digits.BATCH, "lr": lr, "lora_rank": digits.LORA_RANK,
        "eval_samples": len(world.prompts) * samples_per_prompt, "workers": workers, "pretrained": base,
        "runs": runs, "summary": summarize(runs), "equal_compute_runs": compute_runs,
        "equal_compute_summary": summarize(compute_runs) if compute_runs else {},
        "cost_per_update": {a.label: digits.cost_per_update(a.method, world.steps) for a in digits.MAIN_ARMS},
    }
