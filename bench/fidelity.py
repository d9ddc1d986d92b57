"""The fidelity benchmark: the released-code defaults in both embedded worlds, and the noise-swap probe.

    .venv/bin/python -m bench.fidelity                       # 5 seeds, 40 updates, both worlds
    .venv/bin/python -m bench.fidelity --seeds 3 --updates 20 --no-digits   # a reduced run

Writes docs/benchmarks/fidelity.json, docs/benchmarks/fidelity.md (the results page: the GenEval-style
per-category table, equal updates and equal compute, ablations with standard errors, quality and
diversity columns for both worlds) and its plots.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from bench import comfy_env as env  # noqa: E402
from bench import digits, shapes  # noqa: E402
from bench.machine import machine_record  # noqa: E402
from bench.report import _save_figure  # noqa: E402
from leapalign.atomic import atomic_write_text  # noqa: E402

OUT = REPO / "docs" / "benchmarks"
CATS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def probe_composition(log=print) -> dict:
    """The noise-swap probe on the shipped shapes world: at which step is the composition fixed?"""
    import torch

    from leapalign.shapes import spec
    from leapalign.shapes.probe import composition_kept
    from leapalign.shapes.prompts import all_prompts

    world = shapes.load_shapes_world()
    adapters = env.pack_module("nodes.adapters")
    prompts = all_prompts()[::2]
    gen = torch.Generator().manual_seed(11)
    z_a = torch.randn(len(prompts), 16, 4, 4, generator=gen)
    z_b = torch.randn(len(prompts), 16, 4, 4, generator=gen)
    sigmas = adapters.model_sigmas(world.model, "simple", spec.SAMPLING_STEPS)
    with torch.inference_mode(False):
        decoder = adapters.make_decoder(world.vae, world.model)

        def body(velocity, x_init, grid, inner):
            return composition_kept(velocity, decoder, z_a, z_b, grid, list(range(spec.SAMPLING_STEPS))), x_init

        kept, _ = adapters.sample_with(world.model, adapters.PromptEncoder(world.clip, 3.5)(prompts), z_a, sigmas, body)
    log("  probe: layout / composition kept after a noise swap at step "
        + ", ".join(f"{k}: {v['layout']:.2f} / {v['composition']:.2f}" for k, v in kept.items()))
    return {"samples": len(prompts), "kept": kept, "sigmas": sigmas.tolist()}


def _se(row: dict, key: str) -> float:
    return row.get(key + "_std", 0.0) / math.sqrt(max(1, row["n"]))


def _cell(row: dict, key: str, digits_: int = 3) -> str:
    if key not in row:
        return "n/a"
    return f"{row[key]:.{digits_}f} ± {_se(row, key):.{digits_}f}"


def method_table(result: dict, shapes_world: bool) -> list[str]:
    summary = dict(result["summary"])
    summary.update(result.get("equal_compute_summary", {}))
    first = "overall" if shapes_world else "judge acc."
    cats = [f"cat_{c}" for c in CATS] if shapes_world else []
    head = ["arm", "updates", first, *(c[4:] for c in cats), "reward", "FD (lower = closer to real)",
            "diversity / real", "cost per update"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = result["pretrained"]
    base_cells = ["pretrained", "0", f"{base['judge_accuracy']:.3f}", *(f"{base[c]:.3f}" for c in cats),
                  f"{base['reward']:.3f}", f"{base['fd']:.2f}", f"{base['diversity_ratio']:.2f}", ""]
    lines.append("| " + " | ".join(base_cells) + " |")
    for arm, row in summary.items():
        cells = [arm, str(row["updates"]), _cell(row, "judge_accuracy"), *(_cell(row, c) for c in cats),
                 _cell(row, "reward"), _cell(row, "fd", 2), _cell(row, "diversity_ratio", 2),
                 f"{row['cost_per_update']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(result: dict, name: str, key_title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = dict(result["summary"])
    summary.update(result.get("equal_compute_summary", {}))
    labels = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, key, title in ((axes[0], "judge_accuracy", key_title), (axes[1], "reward", "reward"),
                           (axes[2], "fd", "Fréchet distance to real (lower is better)")):
        ax.bar(range(len(labels)), [summary[a][key] for a in labels], yerr=[_se(summary[a], key) for a in labels],
               color=["C1" if "@" in a else "C0" if summary[a]["group"] == "methods" else "C2" for a in labels],
               capsize=3)
        ax.axhline(result["pretrained"][key], color="k", ls="--", lw=1, label="pretrained")
        ax.set_xticks(range(len(labels)), labels, rotation=65, ha="right", fontsize=7)
        ax.set_title(f"{title} (mean ± SE, {len(result['seeds'])} seeds)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = OUT / f"fidelity_{name}.png"
    _save_figure(fig, path)
    plt.close(fig)
    return path.name


def world_section(title: str, result: dict, shapes_world: bool) -> list[str]:
    if not result or not result.get("available"):
        return [f"## {title}", "", f"Not run: {(result or {}).get('reason', 'skipped')}.", ""]
    name = "shapes" if shapes_world else "digits"
    image = plot(result, name, "GenEval-style overall" if shapes_world else "judge accuracy")
    lines = [f"## {title}", "",
             f"{len(result['seeds'])} seeds, {result['updates']} updates of {result['batch']} prompts (lr {result['lr']}, "
             f"LoRA rank {result['lora_rank']}), {result['steps']} sampling steps on Flux's resolution-shifted grid, "
             f"evaluated on {result['eval_samples']} held-out samples. ± is the standard error of the seed mean. "
             "Rows `@ equal compute` give that method LeapAlign's model-forward budget.", "",
             *method_table(result, shapes_world), "", f"![{name}]({image})", "", "Reading (from `bench/digits.py: verdict`):", ""]
    lines += [f"- {text}" for text in digits.verdict(result).values()]
    return lines + [""]


def probe_section(probe: dict | None) -> list[str]:
    if not probe:
        return []
    kept = probe["kept"]
    steps = list(kept)
    rows = [f"| {aspect} kept | " + " | ".join(f"{kept[k][aspect]:.2f}" for k in steps) + " |"
            for aspect in next(iter(kept.values()))]
    return ["## Which steps decide the composition (shapes world)", "",
            f"Noise-swap probe (`leapalign/shapes/probe.py`) on {probe['samples']} samples: at step i keep the model's "
            "current prediction of the clean picture but swap its noise for another, integrate on, and compare with "
            "the unswapped sample: the layout (which cells hold an object), the count, the colour and the shape in "
            "each cell, and all of it (composition). Step 0 (sigma 1) is the chance level: two unrelated samples of "
            "the prompt agreeing.", "",
            "| swap at step | " + " | ".join(str(k) for k in steps) + " |", "|---|" + "---|" * len(steps),
            "| sigma | " + " | ".join(f"{probe['sigmas'][int(k)]:.2f}" for k in steps) + " |", *rows, ""]


def budget_section(budget: dict | None, main: dict | None) -> list[str]:
    """The longer-budget check next to the main run's rows for the same arms."""
    if not budget:
        return []
    lines = ["### Does a longer run change it? (shapes world)", "",
             f"`{budget['command']}` ({budget['seconds'] / 60:.0f} min): {len(budget['seeds'])} seeds at "
             f"{budget['updates']} updates, next to the main run's rows.", "",
             "| arm | updates | seeds | overall | reward | FD |", "|---|---|---|---|---|---|"]
    rows = [(label, row) for label, row in ((main or {}).get("summary") or {}).items() if label in budget["summary"]]
    rows += list(budget["summary"].items())
    for label, row in rows:
        lines.append(f"| {label} | {row['updates']} | {row['n']} | {_cell(row, 'judge_accuracy')} | "
                     f"{_cell(row, 'reward')} | {_cell(row, 'fd', 2)} |")
    s = budget["summary"]
    if "LeapAlign" in s and "ReFL" in s:
        lines += ["", f"- At {budget['updates']} updates: " + digits._vs("LeapAlign", s["LeapAlign"], "ReFL", s["ReFL"]) + "."]
    if "LeapAlign" in s and "late-only (k, j)" in s:
        lines += ["- Full-range vs late-only (k, j): " + digits._vs("full-range", s["LeapAlign"], "late-only",
                                                                        s["late-only (k, j)"]) + "."]
    return lines + [""]


def render(data: dict) -> str:
    lines = ["# Fidelity benchmark: the released defaults, GenEval in miniature", "",
             f"Made by `{data['command']}` in {data['seconds'] / 60:.0f} min on {data['machine'].get('cpu_model', 'a CPU')} "
             f"({data['machine'].get('cpus_usable')} usable CPUs, shared; load average at the start "
             f"{', '.join(f'{x:.1f}' for x in data['machine'].get('loadavg', []))}).", "", data.get("scale_note", ""), ""]
    lines += probe_section(data.get("probe"))
    lines += world_section("Shapes world (GenEval in miniature)", data.get("shapes"), True)
    lines += budget_section(data.get("budget"), data.get("shapes"))
    lines += world_section("Digits world, rerun with the released defaults", data.get("digits"), False)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-digits", action="store_true")
    parser.add_argument("--no-shapes", action="store_true")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--scale-note", default="")
    parser.add_argument("--budget-check", type=int, default=0, metavar="UPDATES",
                        help="only rerun LeapAlign, ReFL and late-only (k, j) at UPDATES updates, 2 seeds, in the "
                             "shapes world, and add them to the page (keeps the rest of fidelity.json)")
    parser.add_argument("--render-only", action="store_true", help="rewrite the page from fidelity.json")
    args = parser.parse_args(argv)
    if args.render_only:
        data = json.loads((OUT / "fidelity.json").read_text())
        data["scale_note"] = args.scale_note or data.get("scale_note", "")
        atomic_write_text(OUT / "fidelity.json", json.dumps(data, indent=1, default=float) + "\n")
        atomic_write_text(OUT / "fidelity.md", render(data))
        return 0
    env.boot()
    if args.budget_check:
        data = json.loads((OUT / "fidelity.json").read_text())
        start = time.perf_counter()
        data["budget"] = shapes.budget_check(updates=args.budget_check, workers=args.workers)
        data["budget"].update(seconds=time.perf_counter() - start, command="python -m bench.fidelity " + " ".join(
            argv if argv is not None else sys.argv[1:]))
        atomic_write_text(OUT / "fidelity.json", json.dumps(data, indent=1, default=float) + "\n")
        atomic_write_text(OUT / "fidelity.md", render(data))
        return 0
    start = time.perf_counter()
    seeds = tuple(range(args.seeds))
    data = {"command": "python -m bench.fidelity " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine_record(), "scale_note": args.scale_note}
    common = {"seeds": seeds, "updates": args.updates, "workers": args.workers, "ablations": not args.no_ablations}
    earlier = json.loads((OUT / "fidelity.json").read_text()) if (OUT / "fidelity.json").is_file() else {}
    if not args.no_shapes:
        data["probe"] = probe_composition()
        data["shapes"] = shapes.run(**common)
    elif "shapes" in earlier:   # a world skipped this time keeps its earlier result and command
        data.update({k: earlier[k] for k in ("probe", "shapes") if k in earlier})
        data["command"] = earlier.get("command", "?") + "` and `" + data["command"]
    if not args.no_digits:
        data["digits"] = digits.run(**common)
    elif "digits" in earlier:
        data["digits"] = earlier["digits"]
        data["command"] = earlier.get("command", "?") + "` and `" + data["command"]
    data["seconds"] = time.perf_counter() - start + earlier.get("seconds", 0.0) * (args.no_shapes or args.no_digits)
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "fidelity.json", json.dumps(data, indent=1, default=float) + "\n")
    atomic_write_text(OUT / "fidelity.md", render(data))
    print(f"wrote {OUT / 'fidelity.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
