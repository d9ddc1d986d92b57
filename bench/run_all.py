"""Run the whole CPU benchmark suite and regenerate docs/benchmarks/ (``make bench``).

    .venv/bin/python bench/run_all.py            # the full suite (~7 min on 2 cores, more under load)
    .venv/bin/python bench/run_all.py --quick    # toy sizes, a couple of minutes (checks the pipeline)

Writes docs/benchmarks/results.json, docs/benchmarks/README.md and the PNG plots. A GPU result file
written earlier by ``python -m bench.gpu_flux`` on a CUDA machine (docs/benchmarks/gpu_flux.json) is
picked up and shown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from bench import comfy_env as env  # noqa: E402
from bench import digits, memory, report, speed, speedups  # noqa: E402
from bench.machine import machine_record, write_json  # noqa: E402

OUT = REPO / "docs" / "benchmarks"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def log(msg: str) -> None:
    print(msg, flush=True)


def flatness(points: list[dict]) -> dict:
    out = {}
    for world in {p["world"] for p in points}:
        pts = {p["steps"]: p for p in points if p["world"] == world and p["variant"] == "LeapAlign" and "error" not in p}
        if 10 in pts and 50 in pts:
            out[world] = {"saved": pts[50]["saved_activation_bytes"] / pts[10]["saved_activation_bytes"],
                          "peak": (pts[50]["step_peak_bytes"] or 0) / max(1, pts[10]["step_peak_bytes"] or 0)}
    return out


def linear_fit(points: list[dict], variant: str) -> dict:
    """Least-squares slope (bytes per step) and R^2 of saved bytes against N, per world."""
    out = {}
    for world in {p["world"] for p in points}:
        pts = sorted((p["steps"], p["saved_activation_bytes"]) for p in points
                     if p["world"] == world and p["variant"] == variant and "error" not in p)
        if len(pts) < 3:
            continue
        xs, ys = [x for x, _ in pts], [y for _, y in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
        ss_res = sum((y - (my + slope * (x - mx))) ** 2 for x, y in pts)
        ss_tot = sum((y - my) ** 2 for y in ys) or 1.0
        out[world] = {"bytes_per_step": slope, "r2": 1 - ss_res / ss_tot}
    return out


def summary_lines(results: dict) -> list[str]:
    out = []
    mem = results.get("memory")
    if mem:
        for world, f in mem["flatness"].items():
            ok = abs(f["saved"] - 1) <= 0.05
            out.append(f"Memory flatness ({world}): LeapAlign N=50 vs N=10 saved bytes {100 * (f['saved'] - 1):+.2f}%, "
                       f"step peak RSS {100 * (f['peak'] - 1):+.1f}% — target within 5%: "
                       + ("**met**" if ok else "**missed**") + ".")
        for world, fit in mem.get("full_backprop_linear_fit", {}).items():
            out.append(f"Full backprop without checkpointing ({world}): +{fit['bytes_per_step'] / 2**20:.2f} MiB saved "
                       f"per rollout step, linear in N (R^2 = {fit['r2']:.4f}).")
    sp = results.get("speed")
    if sp:
        r = sp["floor"]["median_ratio"]
        out.append(f"Step / floor: **{r:.3f}** (target <= 1.15: " + ("met" if r <= 1.15 else f"missed by {r - 1.15:.3f}") + ").")
        su = results.get("speedups")
        if su:
            roll = su["rollout"]["median_seconds"]
            factor = roll[speedups.KSAMPLER_MERGED] / roll[speedups.TRAINING_ROLLOUT]
            seam = roll[speedups.SEAM_FORCED_ROLLOUT] / roll[speedups.KSAMPLER_MERGED]
            parts = sp["floor"]["median_floor_parts_seconds"]
            ideal = sum(parts.values()) - parts["rollout"] * (1 - factor)
            est = r * sum(parts.values()) / ideal
            text = (f"The training rollout (LoRA hooks on every call; the seam is now skipped without grad) runs at "
                    f"{1 / factor:.2f}x KSampler on the LoRA-merged model (section 3; {seam:.2f}x with the seam forced "
                    f"on, as before). Against a floor whose rollout ran at merged-KSampler speed the step ratio would "
                    f"be about **{est:.2f}**")
            if 1 / factor > 1.03:
                text += ("; merging the LoRA into the weights for the no-grad rollout (and unmerging before the "
                         "leaps) would close that gap.")
            else:
                text += ": the rollout has no overhead left to remove."
            out.append(text)
        for rr in sp["rollout_vs_ksampler"]:
            q = rr["median_ratio"]
            out.append(f"Rollout capture / KSampler ({rr['world']}, N={rr['steps']}): **{q:.3f}** (target <= 1.05: "
                       + ("met" if q <= 1.05 else f"missed by {q - 1.05:.3f}") + f"; latents identical to {rr['max_abs_diff_vs_ksampler']:.1g}).")
    d = results.get("digits")
    if d and d.get("available"):
        v = d["verdict"]
        when = "" if "defaults" in d else ", earlier defaults: alpha 0.5, pseudocode (k, j); see fidelity.md"
        out.append(f"Digits world ({len(d['seeds'])} seeds, pretrained judge accuracy "
                   f"{d['pretrained']['judge_accuracy']:.3f}{when}): " + " ".join(
                       v[k] for k in ("ordering", "equal_updates", "equal_compute", "early_steps") if k in v))
    elif d:
        out.append("Digits world: not measured (" + d.get("reason", "") + ").")
    return out


def render_all(results: dict, out_dir: Path) -> Path:
    if results.get("memory"):
        report.plot_memory(results["memory"]["points"], out_dir)
    if results.get("digits", {}).get("available"):
        report.plot_digits(results["digits"], out_dir)
    return report.render(results, out_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the pipeline in a few minutes")
    parser.add_argument("--skip", nargs="*", default=[], choices=["memory", "speed", "speedups", "digits", "gpu"])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--digits-assets", default=None,
                        help="folder with the digits world files (default: the shipped leapalign/assets/demo)")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render the page and plots from an existing results.json (no measuring)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes measuring memory points / training digits runs in parallel")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        results = json.loads((out_dir / "results.json").read_text())
        if results.get("digits", {}).get("available"):
            results["digits"]["verdict"] = digits.verdict(results["digits"])
        results["summary"] = summary_lines(results)
        write_json(out_dir / "results.json", results)
        render_all(results, out_dir)
        return 0
    os.environ.update(MALLOC_ENV)  # inherited by the memory subprocesses
    threads = env.set_threads()
    started = time.perf_counter()
    command = ".venv/bin/python bench/run_all.py" + (" --quick" if args.quick else "")
    if args.skip:
        command += " --skip " + " ".join(args.skip)
    if args.digits_assets:
        command += f" --digits-assets {args.digits_assets}"
    if command == ".venv/bin/python bench/run_all.py":
        command = "make bench  # = " + command
    results: dict = {"machine": machine_record(), "threads": threads, "command": command, "quick": args.quick,
                     "malloc_env": MALLOC_ENV, "notes": []}
    log(f"bench: commit {results['machine']['commit'][:10]}, load {results['machine']['loadavg']}")

    if "memory" not in args.skip:
        steps = (4, 10) if args.quick else (4, 10, 25, 50)
        worlds = ("tiny",) if args.quick else ("tiny", "large")
        variants = ("LeapAlign", "Full backprop (no checkpointing)") if args.quick else tuple(memory.VARIANTS)
        t = time.perf_counter()
        points = memory.sweep(worlds, steps, variants, workers=args.workers, log=log)
        results["memory"] = {
            "command": "bench.memory.sweep (via bench/run_all.py): one forked process per point",
            "workers": args.workers, "steps": list(steps), "variants": list(variants), "points": points,
            "worlds": {w: ", ".join(f"{k} {v}" for k, v in env.MODEL_CONFIGS[w]["flux"].items()
                                    if k in ("hidden_size", "depth", "depth_single_blocks"))
                       + f", latent {env.MODEL_CONFIGS[w]['latent']}x{env.MODEL_CONFIGS[w]['latent']}" for w in worlds},
            "seconds": time.perf_counter() - t}
        results["memory"]["flatness"] = flatness(points)
        results["memory"]["full_backprop_linear_fit"] = linear_fit(points, "Full backprop (no checkpointing)")

    if "speed" not in args.skip:
        steps, reps = (6, 2) if args.quick else (25, 5)
        world = "tiny" if args.quick else "large"
        t = time.perf_counter()
        results["speed"] = {
            "command": "bench.speed.step_vs_floor / rollout_vs_ksampler (via bench/run_all.py)",
            "floor": speed.step_vs_floor(world, steps, reps, log=log),
            "rollout_vs_ksampler": [speed.rollout_vs_ksampler(w, steps, 2 * reps + 1, log=log)
                                    for w in (("tiny",) if args.quick else ("tiny", "large"))],
        }
        results["speed"]["seconds"] = time.perf_counter() - t

    if "speedups" not in args.skip:
        t = time.perf_counter()
        results["speedups"] = speedups.run("tiny" if args.quick else "large", 6 if args.quick else 25,
                                           1 if args.quick else 5, log=log)
        results["speedups"]["command"] = "bench.speedups.run (via bench/run_all.py)"
        results["speedups"]["seconds"] = time.perf_counter() - t

    # the load the timings ran under (the digits workers below load the cores themselves)
    results["loadavg_after_timings"] = list(os.getloadavg())

    if "digits" not in args.skip:
        t = time.perf_counter()
        d = digits.run(seeds=(0,) if args.quick else digits.SEEDS, updates=4 if args.quick else digits.UPDATES,
                       ablations=not args.quick, equal_compute=not args.quick, directory=args.digits_assets,
                       samples_per_digit=4 if args.quick else None, workers=args.workers, log=log)
        d["command"] = "bench.digits.run (via bench/run_all.py)"
        d["seconds"] = time.perf_counter() - t
        if d.get("available"):
            d["verdict"] = digits.verdict(d)
        results["digits"] = d

    if "gpu" not in args.skip:
        dry_path = out_dir / "gpu_flux_dry_run.json"
        proc = subprocess.run([sys.executable, "-m", "bench.gpu_flux", "--dry-run", "--out", str(dry_path)],
                              cwd=str(REPO), capture_output=True, text=True, timeout=900)
        if proc.returncode == 0:
            results["gpu_dry_run"] = json.loads(dry_path.read_text())
        else:
            results["notes"].append("GPU script dry run failed: " + " ".join(proc.stderr.strip().splitlines()[-3:]))
        gpu_path = out_dir / "gpu_flux.json"
        if gpu_path.is_file():
            results["gpu"] = json.loads(gpu_path.read_text())

    results["runtime_seconds"] = time.perf_counter() - started
    results["loadavg_end"] = list(os.getloadavg())
    results["summary"] = summary_lines(results)
    write_json(out_dir / "results.json", results)
    page = render_all(results, out_dir)
    log(f"bench: done in {results['runtime_seconds'] / 60:.1f} min -> {page}")
    for line in results["summary"]:
        log("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
