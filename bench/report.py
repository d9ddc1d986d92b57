"""Turn ``docs/benchmarks/results.json`` into the results page (markdown) and its PNG plots."""

from __future__ import annotations

import math
from pathlib import Path

from leapalign.atomic import atomic_write, atomic_write_text

MIB = 2**20
# What digits runs that did not record their defaults trained with (before the released defaults).
EARLIER_DEFAULTS = {"alpha": 0.5, "pair_sampling": "pseudocode", "schedule": "unshifted"}


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _save_figure(fig, path: Path) -> None:
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=110, format="png"))


def _fmt(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _by(points, world, variant):
    return sorted((p for p in points if p.get("world") == world and p.get("variant") == variant and "error" not in p),
                  key=lambda p: p["steps"])


def plot_memory(points: list[dict], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = sorted({p["world"] for p in points}, key=lambda w: w != "tiny")
    variants = list(dict.fromkeys(p["variant"] for p in points))
    files = []
    for key, ylabel, name in (("saved_activation_bytes", "bytes saved for backward (MiB)", "memory_saved_bytes.png"),
                              ("step_peak_bytes", "step peak RSS above start (MiB)", "memory_peak_rss.png")):
        fig, axes = plt.subplots(1, len(worlds), figsize=(6 * len(worlds), 4.2), squeeze=False)
        for ax, world in zip(axes[0], worlds):
            for variant in variants:
                pts = [p for p in _by(points, world, variant) if p.get(key) is not None]
                if pts:
                    ax.plot([p["steps"] for p in pts], [p[key] / MIB for p in pts], marker="o", label=variant)
            ax.set_title(f"{world} Flux")
            ax.set_xlabel("rollout steps N")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        _save_figure(fig, out_dir / name)
        plt.close(fig)
        files.append(name)
    return files


def plot_digits(digits: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = dict(digits["summary"])
    summary.update(digits.get("equal_compute_summary", {}))
    labels = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, key, title in ((axes[0], "judge_accuracy", "judge accuracy"), (axes[1], "reward", "reward (log p)")):
        ax.bar(range(len(labels)), [summary[a][key] for a in labels], yerr=[summary[a][key + "_std"] for a in labels],
               color=["C0" if summary[a]["group"] == "methods" and "@" not in a else "C1" if "@" in a else "C2"
                      for a in labels], capsize=3)
        ax.axhline(digits["pretrained"][key], color="k", ls="--", lw=1, label="pretrained")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{title} (mean ± sd over {len(digits['seeds'])} seeds)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, out_dir / "digits_comparison.png")
    plt.close(fig)
    return ["digits_comparison.png"]


def memory_section(mem: dict) -> list[str]:
    points = mem["points"]
    lines = ["## 1. Memory as N grows", "",
             f"Command: `{mem['command']}` (each point in a fresh process; {mem['workers']} at a time).",
             "", "Bytes saved for backward = unique storages packed by `torch.autograd.graph.saved_tensors_hooks` "
             "during the step, weights excluded (hardware-independent). Step peak = the kernel's peak RSS "
             "(`VmHWM`, reset through `/proc/self/clear_refs` right before the step) minus the RSS at its start, "
             "with glibc's dynamic mmap threshold pinned so freed blocks go back to the OS. Under checkpointing the "
             "hooks do not see what the checkpoint keeps for recomputation (latent-sized inputs), the peak RSS does.",
             ""]
    for world in sorted({p["world"] for p in points}, key=lambda w: w != "tiny"):
        ns = sorted({p["steps"] for p in points if p["world"] == world})
        wp = [p for p in points if p["world"] == world and "error" not in p]
        decode = wp[0]["decode_reward_saved_bytes"] / MIB if wp else float("nan")
        lines += [f"### {world} Flux ({mem['worlds'].get(world, '')})", "",
                  f"Decoder + reward alone save {decode:.1f} MiB (constant in N; included below).", "",
                  "| method | " + " | ".join(f"saved MiB, N={n}" for n in ns) + " | " +
                  " | ".join(f"peak MiB, N={n}" for n in ns) + " | saved N=50 / N=10 |",
                  "|---|" + "---|" * (2 * len(ns) + 1)]
        for variant in mem["variants"]:
            pts = {p["steps"]: p for p in _by(points, world, variant)}
            saved = [(_fmt(pts[n]["saved_activation_bytes"] / MIB, 1) if n in pts else "err") for n in ns]
            peak = [(_fmt((pts[n]["step_peak_bytes"] or float("nan")) / MIB, 1) if n in pts else "err") for n in ns]
            ratio = (pts[50]["saved_activation_bytes"] / pts[10]["saved_activation_bytes"]
                     if 50 in pts and 10 in pts else float("nan"))
            lines.append(f"| {variant} | " + " | ".join(saved) + " | " + " | ".join(peak) + f" | {_fmt(ratio)} |")
        lines.append("")
    flat = mem.get("flatness", {})
    if flat:
        lines += ["**LeapAlign flatness (target: N=50 within 5% of N=10):** " + "; ".join(
            f"{w}: saved bytes {_fmt(100 * (f['saved'] - 1), 2)}%, step peak RSS {_fmt(100 * (f['peak'] - 1), 1)}%"
            for w, f in flat.items()), ""]
    lines += ["![bytes saved for backward](memory_saved_bytes.png)", "", "![step peak RSS](memory_peak_rss.png)", ""]
    errors = [p for p in points if "error" in p]
    if errors:
        lines += ["Points that failed: " + "; ".join(f"{p['world']}/{p['variant']}/N={p['steps']}: {p['error']}"
                                                     for p in errors), ""]
    return lines


def speed_section(speed: dict) -> list[str]:
    floor, roll = speed["floor"], speed["rollout_vs_ksampler"]
    parts = floor["median_floor_parts_seconds"]
    lines = ["## 2. Time per step against its floor", "",
             f"Command: `{speed['command']}`; {floor['world']} Flux, N = {floor['steps']}, batch {floor['batch']}, "
             f"(k, j) = {tuple(floor['pair'])}, {floor['reps']} interleaved reps, medians.", "",
             "The step is a full training step as the training node runs it (ComfyUI guider + `compute_loss` + "
             "backward inside the sampler call + grad clip + AdamW). The floor is measured with bare code in the same run: an Euler loop of "
             "no-grad velocity calls, two velocity calls with grad, decode + reward, one backward.", "",
             "| step (s) | floor (s) | rollout | 2 evals fwd | decode+reward fwd | backward | **step / floor** | target |",
             "|---|---|---|---|---|---|---|---|",
             f"| {_fmt(floor['median_step_seconds'])} | {_fmt(floor['median_floor_seconds'])} | {_fmt(parts['rollout'])} | "
             f"{_fmt(parts['two_evals_forward'])} | {_fmt(parts['decode_reward_forward'])} | {_fmt(parts['backward'])} | "
             f"**{_fmt(floor['median_ratio'])}** | <= {floor['target']} |", "",
             "Per-rep ratios: " + ", ".join(_fmt(r) for r in floor["ratios"]), "",
             "### Rollout capture vs ComfyUI's KSampler", "",
             "`LeapAlignRolloutCapture.capture` vs `KSampler.sample` (euler, simple, cfg 1), same model, seed and "
             "steps, both under `torch.inference_mode()` as the executor runs them, order alternated per rep; the ratio is "
             "the median of the per-rep (paired) ratios.", "",
             "| model | N | KSampler (s) | capture (s) | **capture / KSampler** | max abs diff of latents | target |",
             "|---|---|---|---|---|---|---|"]
    for r in roll:
        lines.append(f"| {r['world']} | {r['steps']} | {_fmt(r['median_ksampler_seconds'])} | "
                     f"{_fmt(r['median_capture_seconds'])} | **{_fmt(r['median_ratio'])}** | "
                     f"{r['max_abs_diff_vs_ksampler']:.3g} | <= {r['target']} |")
    return lines + [""]


def speedups_section(sp: dict) -> list[str]:
    roll = sp["rollout"]["median_seconds"]
    from bench.speedups import KSAMPLER_MERGED

    ref = roll[KSAMPLER_MERGED]
    leap = sp["leap_checkpointing"]
    ds = sp["decode_and_storage"]["median_seconds"]
    kept = sp["decode_and_storage"]["kept_latent_bytes"]
    lines = ["## 3. Where the time goes, and what each speed-up buys", "",
             f"{sp['world']} Flux, N = {sp['steps']}, {sp['reps']} interleaved reps, medians. Command: `{sp['command']}`.",
             "", "**Rollout** (no grad, N velocity calls):", "", "| rollout | s | vs KSampler with LoRA merged |",
             "|---|---|---|"]
    lines += [f"| {name} | {_fmt(t)} | {_fmt(t / ref)} |" for name, t in roll.items()]
    lines += ["", f"bf16 autocast moves the final latent by {_fmt(100 * sp['rollout']['bf16_final_rel_diff'], 2)}% "
              "(relative L2).", "",
              "**Checkpointing the two leaps** (two velocity calls with grad + decode + reward + backward):", "",
              "| checkpointing | s | saved for backward (MiB) | gradient rel. diff vs none |", "|---|---|---|---|"]
    for mode, t in leap["median_seconds"].items():
        lines.append(f"| {mode} | {_fmt(t)} | {_fmt(leap['saved_activation_bytes'][mode] / MIB, 1)} | "
                     f"{leap['grad_rel_diff_vs_none'][mode]:.2g} |")
    lines += ["", "**Decode and trajectory storage**:", "", "| what | s |", "|---|---|"]
    lines += [f"| {name} | {_fmt(t)} |" for name, t in ds.items()]
    lines += ["", f"Latents kept by the rollout: {kept['x_k, x_j, x_0'] / 1024:.0f} KiB for x_k, x_j, x_0 vs "
              f"{kept['every latent'] / 1024:.0f} KiB for every latent (N = {sp['steps']}).", ""]
    return lines


DIGITS_CONTEXT = (
    "How far this carries to the paper: the digits world is an 8-step sampler on a 2x2x16 latent with a "
    "0.4 M-parameter model, a classifier reward, batch 16 and tens of updates at lr 1e-3; the paper trains "
    "Flux.1-dev at 25 steps, 720x720, batch 64 for 300 iterations at lr 1e-5 on preference and composition "
    "prompts, and compares at equal iterations. Per update, a method that backpropagates through more velocity "
    "calls (DRTune: 5, full backprop: all N) gets more gradient signal, which a short run on a tiny model "
    "rewards; the equal-compute rows charge for it. On Flux.1-dev those chains also cost memory (section 1) "
    "that this world never runs short of.")


def _defaults_note(digits: dict) -> list[str]:
    """A run made before the released defaults says so, and where the rerun with them is."""
    if "defaults" in digits:
        return []
    return ["**Measured with the earlier defaults** (alpha 0.5, the paper pseudocode's (k, j) sampling, Flux's "
            "unshifted schedule, the earlier baseline settings). The digits comparison with the released defaults "
            "(alpha 0.3, released pair sampling, the resolution-shifted grid, the released baseline settings) is on "
            "[fidelity.md](fidelity.md), next to the shapes world's.", ""]


def digits_section(digits: dict | None) -> list[str]:
    lines = ["## 4. The paper's comparison in miniature (digits world)", ""]
    if not digits or not digits.get("available"):
        reason = (digits or {}).get("reason", "not run")
        return lines + [f"**Not measured in this run:** {reason}.", ""]
    world = digits.get("world", {})
    assets = world.get("assets", "")
    shipped = assets.replace("\\", "/").endswith("leapalign/assets/demo")
    lines += [f"World: {'the shipped digits world' if shipped else 'the digits world in'} `{assets}` "
              f"(sha256 prefixes {', '.join(f'{k} {v}' for k, v in world.get('sha256', {}).items())}).", "",
              f"Command: `{digits['command']}`. {len(digits['seeds'])} seeds per arm (seeds "
              f"{', '.join(map(str, digits['seeds']))}), {digits['updates']} updates of batch {digits['batch']} "
              f"(the ten digit prompts in turn), lr {digits['lr']}, LoRA rank {digits['lora_rank']}, AdamW, no EMA, "
              f"N = {digits['steps']} Euler steps; each run trains in a forked worker with one torch thread "
              f"({digits.get('workers', 1)} at a time). The demo's budget (150 updates) takes every method to ~99%, "
              "so this budget stops where methods are still apart (chosen by a preliminary sweep, see "
              "`bench/digits.py`). Evaluation as `make demo` does it (`LeapAlign Digits Evaluate`): stock KSampler "
              f"on fixed held-out noises, {digits['eval_samples']} samples (every digit prompt), the exported LoRA "
              "applied as ComfyUI patches; reward = the training reward net's log-probability of the prompted "
              "digit, judge accuracy = how often the independent judge sees the prompted digit.", "",
              *_defaults_note(digits),
              f"Pretrained model: reward {_fmt(digits['pretrained']['reward'])}, judge accuracy "
              f"{_fmt(digits['pretrained']['judge_accuracy'])}. Spread = sample sd over seeds.", "",
              "| arm | updates | cost / update | reward | judge accuracy | reward-net accuracy | train s |",
              "|---|---|---|---|---|---|---|"]
    rows = dict(digits["summary"])
    rows.update(digits.get("equal_compute_summary", {}))
    defaults = digits.get("defaults", EARLIER_DEFAULTS)
    for arm, r in rows.items():
        label = f"LeapAlign (alpha = {defaults['alpha']}, two-step, weighted, full range)" if arm == "LeapAlign" else arm
        lines.append(f"| {label} | {r['updates']} | {_fmt(r.get('cost_per_update'), 1)} | "
                     f"{_fmt(r['reward'])} ± {_fmt(r['reward_std'])} | {_fmt(r['judge_accuracy'])} ± "
                     f"{_fmt(r['judge_accuracy_std'])} | {_fmt(r['reward_net_accuracy'])} | {_fmt(r['seconds'], 1)} |")
    lines += ["", "Cost per update = model-forward equivalents per sample (no-grad call 1, call with grad + backward 3; "
              "no checkpointing in these runs); equal-compute arms get LeapAlign's budget in updates.", "",
              "![digits comparison](digits_comparison.png)", ""]
    if digits.get("verdict"):
        lines += ["**Does the paper's ordering reproduce?**", ""] + [f"- {v}" for v in digits["verdict"].values()] + [""]
    lines += [DIGITS_CONTEXT, ""]
    return lines


def gpu_section(gpu: dict | None, dry: dict | None) -> list[str]:
    lines = ["## 5. GPU figures (Flux.1-dev size, 720x720, N = 25, LoRA, block checkpointing)", ""]
    if gpu and not gpu.get("dry_run"):
        m = gpu["machine"]
        lines += [f"Measured on {m.get('gpu')} ({m['cpu_model']}), commit `{m['commit']}`, command `{gpu['command']}`.",
                  "", "| method | s / step | peak GPU memory (GiB) |", "|---|---|---|"]
        for name, r in gpu["methods"].items():
            lines.append(f"| {name} | {_fmt(r['seconds_per_step'], 2)} | {_fmt(r['peak_gpu_memory_bytes'] / 2**30, 1)} |")
    else:
        lines += ["**No GPU was available for this run**, so there are no GPU figures yet. On a CUDA machine run",
                  "", "```", ".venv/bin/python -m bench.gpu_flux", "```", "",
                  "It builds a random-initialised Flux.1-dev-sized transformer (hidden 3072, 19 double + 38 single "
                  "blocks, ~12 B parameters) through ComfyUI's Flux classes in bf16, 720x720 (90x90 latent -> 45x45 = "
                  "2025 image tokens + 512 text tokens), N = 25, a rank-16 LoRA, every block checkpointed, and writes "
                  "s/step and peak GPU memory for LeapAlign, ReFL and full backprop to `docs/benchmarks/gpu_flux.json`; "
                  "`make bench` then puts them here."]
        if dry:
            lines += ["", "The same script's CPU dry run (toy size, same code path) passed in this run: " + ", ".join(
                f"{n} {_fmt(r['seconds_per_step'], 2)} s/step" for n, r in dry["methods"].items()) + "."]
    return lines + ["", MEMORY_PLAN_NOTE, ""]


MEMORY_PLAN_NOTE = ("**Memory plan** (what a step needs per card and batch, with the `memory_preset` options): "
                    "[memory.md](memory.md), written by `python -m bench.memory_plan table`. Its GPU figures are "
                    "predictions (real-width saved-bytes accounting on the CPU, checked against real CPU runs) "
                    "until `python -m bench.gpu_flux --preset 'fit 24 GB'` has run on a GPU.")


def _changes_note(machine: dict) -> str:
    """What the working tree held on top of the commit (the lead commits after a run)."""
    if not machine.get("working_tree_dirty"):
        return "; clean working tree."
    changes = machine.get("working_tree_changes")
    if not changes:
        return " plus uncommitted changes."
    shown = ", ".join(f"`{c}`" for c in changes[:15])
    more = f" and {len(changes) - 15} more" if len(changes) > 15 else ""
    return f" plus these uncommitted changes in the working tree: {shown}{more}."


def render(results: dict, out_dir: Path) -> Path:
    m = results["machine"]
    timed = results.get("loadavg_after_timings", results["loadavg_end"])
    lines = ["# Benchmarks", "",
             "Cost and benefit of LeapAlign against ReFL, DRaFT-LV, DRTune and full backprop, measured by the "
             "scripts in `bench/`. Regenerate everything (JSON, this page, the plots) with:", "",
             "```", results["command"], "```", "",
             f"- Machine: {m['cpu_model']}, {m['cpus_usable']} usable cores, torch {m['torch']} with "
             f"{results['threads']} intra-op thread(s); GPU: {m['gpu'] or 'none'}.",
             f"- Commit: `{m['commit']}` (HEAD when the suite ran)" + _changes_note(m),
             f"- Run: {m['time_utc']}, {results['runtime_seconds'] / 60:.1f} minutes in total; load average "
             f"{', '.join(f'{x:.1f}' for x in m['loadavg'])} at the start, "
             f"{', '.join(f'{x:.1f}' for x in timed)} after the timed sections (memory, speed, speed-ups), "
             f"{', '.join(f'{x:.1f}' for x in results['loadavg_end'])} at the end (the digits runs load both cores "
             "themselves).", ""]
    if max(m["loadavg"][0], timed[0]) > 0.8 * (m["cpus_usable"] or 1):
        lines += ["> Timings were taken on a **shared machine under load** (other processes used the cores). "
                  "Absolute seconds are inflated and noisy; every ratio on this page compares runs interleaved "
                  "in the same process, so load hits both sides.", ""]
    lines += ["## Summary", ""] + [f"- {s}" for s in results.get("summary", [])] + [""]
    if results.get("memory"):
        lines += memory_section(results["memory"])
    if results.get("speed"):
        lines += speed_section(results["speed"])
    if results.get("speedups"):
        lines += speedups_section(results["speedups"])
    lines += digits_section(results.get("digits"))
    lines += gpu_section(results.get("gpu"), results.get("gpu_dry_run"))
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    page = out_dir / "README.md"
    write_text_atomic(page, "\n".join(lines))
    return page
