"""Training step time of the digits demo inside a real ComfyUI server vs through the CLI (``make demo``).

Both sides run the same graph (``workflows/demo_digits.json``, its API twin for the server) with the
same step count; the evaluation node samples one noise per digit so the runs stay short. Step times
are the gaps between consecutive lines of the run's ``metrics.jsonl`` (the training node appends one
per optimizer step), watched by a polling thread; the first gaps (warm-up) are dropped and the median
is reported. The server is ``python .comfyui/main.py --cpu`` started by ``tests/comfy_server.py``,
with nothing in its launch flags about threads: whatever makes it as fast as the CLI must be in the pack.
The two sides alternate ``--rounds`` times so that load from other processes hits both alike.

    .venv/bin/python -m bench.server_vs_cli            # writes docs/benchmarks/server_vs_cli.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "tests"):
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

from comfy_server import ComfyServer  # noqa: E402

from trainer_cli.progress import MetricsFollower  # noqa: E402

TRAIN_TITLE = "Train LoRA (LeapAlign)"
EVAL_TITLE = "Before / after on held-out noises"
RUN_NAME = "digits_demo"
WARMUP_STEPS = 3
RESULT = REPO / "docs" / "benchmarks" / "server_vs_cli.json"


class StepTimes:
    """Arrival time of every metrics line; ``median_s`` is the median gap after the warm-up."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, record: dict) -> None:
        self.stamps.append(time.perf_counter())

    def median_s(self) -> float:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])][WARMUP_STEPS - 1:]
        if not gaps:
            raise RuntimeError(f"only {len(self.stamps)} metrics lines arrived; raise --steps")
        return statistics.median(gaps)


def follow(metrics: Path, run) -> StepTimes:
    times = StepTimes()
    metrics.parent.mkdir(parents=True, exist_ok=True)
    follower = MetricsFollower(metrics, times, interval_s=0.01).start()
    try:
        run()
    finally:
        follower.stop()
    return times


def cli_round(folder: Path, steps: int, seed: int) -> float:
    """``python -m trainer_cli.demo`` (what ``make demo`` runs) in a child process."""
    command = [sys.executable, "-m", "trainer_cli.demo", "--output", str(folder), "--no-reload-check",
               "--set", f"{TRAIN_TITLE}.steps={steps}", "--set", f"{TRAIN_TITLE}.seed={seed}",
               "--set", f"{EVAL_TITLE}.samples_per_digit=1"]

    def run() -> None:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"the CLI demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    return follow(folder / "leapalign" / RUN_NAME / "metrics.jsonl", run).median_s()


def demo_prompt(steps: int, seed: int, run_name: str) -> dict:
    prompt = json.loads((REPO / "workflows" / "api" / "demo_digits.api.json").read_text(encoding="utf-8"))
    for node in prompt.values():
        title = node.get("_meta", {}).get("title")
        if title == TRAIN_TITLE:
            node["inputs"].update(steps=steps, seed=seed, run_name=run_name)
        elif title == EVAL_TITLE:
            node["inputs"]["samples_per_digit"] = 1
    return prompt


def server_round(server: ComfyServer, steps: int, seed: int) -> float:
    """One run in the long-lived server, under its own run name (a finished run's folder refuses a fresh one)."""
    run_name = f"{RUN_NAME}_round{seed}"

    def run() -> None:
        entry = server.wait_for(server.queue(demo_prompt(steps, seed, run_name)), timeout_s=1800)
        if entry["status"].get("status_str") != "success":
            raise RuntimeError(f"the server run failed: {entry['status']}\n{server.log_tail()}")

    return follow(server.output_dir / "leapalign" / run_name / "metrics.jsonl", run).median_s()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)

    cli, server_times = [], []
    with tempfile.TemporaryDirectory(prefix="leapalign-bench-") as scratch:
        scratch = Path(scratch)
        with ComfyServer(scratch / "server") as server:
            for index in range(args.rounds):
                cli.append(cli_round(scratch / f"cli{index}", args.steps, seed=index))
                server_times.append(server_round(server, args.steps, seed=index))
                print(f"round {index + 1}: CLI {cli[-1]:.3f} s/step, server {server_times[-1]:.3f} s/step", flush=True)
    result = {
        "what": "digits demo training step time: ComfyUI server (main.py --cpu) vs CLI (trainer_cli.demo)",
        "steps_per_run": args.steps, "rounds": args.rounds, "warmup_steps_dropped": WARMUP_STEPS,
        "cli_step_s": statistics.median(cli), "server_step_s": statistics.median(server_times),
        "cli_rounds_s": cli, "server_rounds_s": server_times,
        "load_average_1min_at_end": os.getloadavg()[0], "cpu_count": os.cpu_count(),
    }
    result["ratio_server_over_cli"] = result["server_step_s"] / result["cli_step_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"server / CLI step time: {result['ratio_server_over_cli']:.2f} "
          f"({result['server_step_s']:.3f} s vs {result['cli_step_s']:.3f} s); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
