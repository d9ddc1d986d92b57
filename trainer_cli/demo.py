"""``make demo`` / ``python -m trainer_cli.demo``: the project's main job on a tiny built-in world.

Runs ``leapalign-comfy train workflows/demo_digits.json`` (in this process), then reloads the LoRA it
wrote with ComfyUI's stock ``LoraLoaderModelOnly`` and checks it draws the same improved samples, and
prints a before/after report: judge accuracy and mean reward on fixed held-out noises and prompts,
training speed, and where the LoRA and pictures went. No GPU and no downloaded weights are needed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from leapalign.checkpoint import RUNS_FOLDER, list_checkpoints

from .locate import REPO_ROOT
from .training_nodes import TRAIN_NODES

WORKFLOW = REPO_ROOT / "workflows" / "demo_digits.json"
DEMO_RUNS = Path("runs") / "demo"
TRAIN_NODE = "Train LoRA (LeapAlign)"
EVAL_PREFIX = "digits_before_after"
CURVES_PREFIX = "digits_curves"
RELOAD_PREFIX = "digits_reloaded_lora"
LORA_PREFIX = "digits_leapalign"
RUN_NAME = "digits_demo"

INTRO = """\
LeapAlign demo: the digits world
  A 0.4 M-parameter model in ComfyUI's Flux architecture, pretrained on scikit-learn's handwritten
  digits with half of its prompts scrambled, so it draws the prompted digit ("a handwritten seven")
  only about half of the time. LeapAlign trains a LoRA on a reward (a digit classifier's
  log-probability of the prompted digit); an independent judge (another classifier, other data)
  counts how often the samples show the prompted digit."""


@dataclass
class RunFiles:
    scores: Path
    grid: Path
    curves: Path | None
    lora: Path | None
    metrics: Path | None


class DemoError(RuntimeError):
    """The demo could not finish; the message says which part failed."""


def _snapshot(folder: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def _newest(paths: list[Path], pattern: str) -> Path | None:
    matches = sorted((p for p in paths if p.match(pattern)), key=lambda p: (p.stat().st_mtime, p.name))
    return matches[-1] if matches else None


def find_run_files(output: Path, before: dict[Path, float]) -> RunFiles:
    """The files this run wrote (new or changed since ``before``) in the run folder."""
    written = [p for p, stamp in _snapshot(output).items() if before.get(p) != stamp]
    scores = _newest(written, f"{EVAL_PREFIX}_*_.json")
    grid = _newest(written, f"{EVAL_PREFIX}_*_.png")
    if scores is None or grid is None:
        raise DemoError(f"the training run wrote no before/after evaluation into {output}; "
                        "see the log in its logs/ folder")
    metrics = output / RUNS_FOLDER / RUN_NAME / "metrics.jsonl"
    return RunFiles(scores=scores, grid=grid, curves=_newest(written, f"{CURVES_PREFIX}_*_.png"),
                    lora=_newest(written, f"{LORA_PREFIX}_*_.safetensors"),
                    metrics=metrics if metrics.is_file() else None)


class StepClock:
    """Wall-clock time of each training step, from the moment its metrics line appears."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, record: dict) -> None:
        self.stamps.append(time.monotonic())

    def steps_per_second(self) -> float | None:
        if len(self.stamps) < 2 or self.stamps[-1] <= self.stamps[0]:
            return None
        return (len(self.stamps) - 1) / (self.stamps[-1] - self.stamps[0])


def train(output: Path, overrides: list[str], verbose: bool, resume: bool = False) -> tuple[int, StepClock]:
    """``leapalign-comfy train workflows/demo_digits.json --output OUTPUT`` in this process, timed per step."""
    from .main import run
    from .progress import MetricsFollower

    argv = ["train", _display(WORKFLOW), "--output", _display(output), "--no-tensorboard", "--cpu"]
    for item in overrides:
        argv += ["--set", item]
    if resume:
        argv.append("--resume")
    if verbose:
        argv.append("--verbose")
    shown = " ".join(a if " " not in a else f'"{a}"' for a in argv)
    print(f"\n$ leapalign-comfy {shown}", flush=True)
    clock = StepClock()
    metrics = output / RUNS_FOLDER / RUN_NAME / "metrics.jsonl"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    follower = MetricsFollower(metrics, clock, interval_s=0.05).start()
    try:
        code = run(argv)
    finally:
        follower.stop()
    return code, clock


def reload_with_stock_loader(output: Path, lora: Path, samples_per_digit: int, seed: int, steps: int) -> dict:
    """Evaluate the world's model + the saved LoRA through ``LoraLoaderModelOnly`` (same noises)."""
    from .comfy_runtime import execute_prompt

    lora_name = lora.relative_to(output).as_posix()  # the run folder is ComfyUI's loras folder
    prompt = {
        "1": {"class_type": "LeapAlignDigitsWorld", "inputs": {}},
        "2": {"class_type": "LoraLoaderModelOnly",
              "inputs": {"model": ["1", 0], "lora_name": lora_name, "strength_model": 1.0}},
        "3": {"class_type": "LeapAlignDigitsEvaluate",
              "inputs": {"model": ["2", 0], "clip": ["1", 1], "vae": ["1", 2], "reward": ["1", 3], "judge": ["1", 4],
                         "samples_per_digit": samples_per_digit, "seed": seed, "sampling_steps": steps,
                         "filename_prefix": RELOAD_PREFIX}},
    }
    import comfy.utils

    before = _snapshot(output)
    root = logging.getLogger()
    level, bars = root.level, comfy.utils.PROGRESS_BAR_ENABLED
    root.setLevel(logging.WARNING)  # ComfyUI's INFO chatter and sampler progress bars stay out of the report
    comfy.utils.PROGRESS_BAR_ENABLED = False
    try:
        result = execute_prompt(prompt)
    finally:
        root.setLevel(level)
        comfy.utils.PROGRESS_BAR_ENABLED = bars
    if not result.success:
        raise DemoError(f"reloading {lora_name} with LoraLoaderModelOnly failed: {result.error}")
    written = [p for p, stamp in _snapshot(output).items() if before.get(p) != stamp]
    scores = _newest(written, f"{RELOAD_PREFIX}_*_.json")
    if scores is None:
        raise DemoError("the reload evaluation wrote no scores")
    return json.loads(scores.read_text(encoding="utf-8"))


REWARD_TOLERANCE = 1e-3
"""How far the reloaded model's mean reward may be from the trained one's.

The stock loader merges ``W + scale * up @ down`` into the weights, while training applied the LoRA as a
separate product: the same math, rounded differently (about 1e-7 relative per layer), which moves the
mean reward in its 7th or 8th digit. A LoRA saved or loaded wrong moves it by far more than 1e-3.
"""


def reload_matches(trained, reloaded) -> tuple[bool, float]:
    """Whether the reloaded model scores like the trained one; and the largest difference of any figure.

    Accuracies may differ by at most one picture (a sample within rounding distance of a decision
    boundary can flip), the mean reward by :data:`REWARD_TOLERANCE`.
    """
    a, b = trained.to_dict(), reloaded.to_dict()
    if a["samples"] != b["samples"]:
        return False, float("inf")
    one_picture = 1.0 / a["samples"] + 1e-9
    one_per_digit = 10.0 / a["samples"] + 1e-9
    diffs = {key: abs(float(a[key]) - float(b[key])) for key in ("judge_accuracy", "reward_accuracy", "mean_reward")}
    per_digit = [abs(x - y) for x, y in zip(a["judge_accuracy_per_digit"], b["judge_accuracy_per_digit"])
                 if x == x and y == y]  # NaN: a digit with no samples
    ok = (diffs["judge_accuracy"] <= one_picture and diffs["reward_accuracy"] <= one_picture
          and diffs["mean_reward"] <= REWARD_TOLERANCE and all(d <= one_per_digit for d in per_digit))
    return ok, max([*diffs.values(), *per_digit])


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def report(files: RunFiles, scores: dict, reloaded: dict | None, clock: StepClock, batch: int | None,
           output: Path) -> list[str]:
    from leapalign.demo.evaluate import DigitsScore
    from leapalign.demo.report import format_scores

    before, after = DigitsScore(**scores["before"]), DigitsScore(**scores["after"])
    n, seed = scores["samples_per_digit"], scores["seed"]
    lines = ["", f"Before / after training, on {before.samples} held-out samples "
                 f"({n} fixed noises x 10 prompts, seed {seed}, {scores['sampling_steps']} Euler steps):"]
    lines += ["  " + line for line in format_scores(before, after)]
    rate = clock.steps_per_second()
    if rate is not None:
        per = f" of {batch} prompts" if batch else ""
        lines.append(f"  training speed: {rate:.2f} steps/s ({len(clock.stamps)} steps{per})")
    if reloaded is not None:
        again = DigitsScore(**reloaded["model"])
        same, diff = reload_matches(after, again)
        lines.append(f"  LoRA reloaded with stock LoraLoaderModelOnly: judge accuracy {_percent(again.judge_accuracy)}, "
                     f"mean reward {again.mean_reward:.3f} ({'matches' if same else 'DIFFERS FROM'} "
                     f"the trained model, max diff {diff:.2g})")
    lines.append("")
    lines.append("Files:")
    shown = [("LoRA", files.lora), ("before/after grid", files.grid), ("reward/loss curves", files.curves),
             ("scores (JSON)", files.scores), ("training metrics", files.metrics)]
    for label, path in shown:
        if path is not None:
            lines.append(f"  {label + ':':20} {_display(path)}")
    lines.append(f"  {'run folder:':20} {_display(output)}  (open workflows/demo_digits.json in ComfyUI to see the graph)")
    return lines


def _display(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


def _batch_size(output: Path) -> int | None:
    with contextlib.suppress(OSError, json.JSONDecodeError, StopIteration):
        prompt = json.loads((output / "workflow.api.json").read_text(encoding="utf-8"))
        node = next(n for n in prompt.values() if n.get("class_type") in TRAIN_NODES)
        return int(node["inputs"]["batch_size"])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer_cli.demo", description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", type=Path,
                        help=f"run folder (default: a new {DEMO_RUNS}/<date-time> folder, so runs never collide)")
    parser.add_argument("--set", metavar="NODE.INPUT=VALUE", action="append", default=[],
                        help=f"override a workflow value, e.g. --set \"{TRAIN_NODE}.steps=60\" (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue a stopped demo run from its latest checkpoint (needs --output)")
    parser.add_argument("--no-reload-check", action="store_true",
                        help="skip re-evaluating the saved LoRA through LoraLoaderModelOnly")
    parser.add_argument("-v", "--verbose", action="store_true", help="show ComfyUI's log")
    args = parser.parse_args(argv)
    if args.resume and args.output is None:
        parser.error("--resume needs --output, the folder of the run to continue")
    if args.output is not None and args.output.exists() and not args.output.is_dir():
        print(f"error: --output {args.output} is a file; give a folder for the run (new or existing)", file=sys.stderr)
        return 2

    import torch

    # The world's matrices are tiny: on a CPU, one thread beats several (thread hand-offs cost more
    # than they save, and on a busy machine they cost a lot more).
    torch.set_num_threads(1)
    print(INTRO, flush=True)
    output = (args.output or DEMO_RUNS / time.strftime("%Y%m%d-%H%M%S")).resolve()
    before = _snapshot(output)
    started = time.monotonic()
    code, clock = train(output, args.set, args.verbose, args.resume)
    if code == 130 and list_checkpoints(output / RUNS_FOLDER / RUN_NAME):
        print(f"\nto continue the demo: python -m trainer_cli.demo --output {_display(output)} --resume",
              file=sys.stderr)
        return code
    if code != 0:
        print(f"\nthe training run failed (exit code {code}); see the message above", file=sys.stderr)
        return code
    try:
        files = find_run_files(output, before)
        scores = json.loads(files.scores.read_text(encoding="utf-8"))
        reloaded = None
        if files.lora is not None and not args.no_reload_check:
            reloaded = reload_with_stock_loader(output, files.lora, scores["samples_per_digit"], scores["seed"],
                                                scores["sampling_steps"])
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in report(files, scores, reloaded, clock, _batch_size(output), output):
        print(line)
    if reloaded is not None:
        from leapalign.demo.evaluate import DigitsScore

        same, diff = reload_matches(DigitsScore(**scores["after"]), DigitsScore(**reloaded["model"]))
        if not same:
            print(f"error: the LoRA reloaded with LoraLoaderModelOnly does not score like the trained model "
                  f"(largest difference {diff:.3g}); the saved file or its loading is wrong", file=sys.stderr)
            return 1
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
