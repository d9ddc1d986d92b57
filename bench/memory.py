"""Memory as the rollout length N grows: bytes autograd saves for backward and the step's peak RSS.

Each point runs in a fresh process (forked from a parent that booted ComfyUI once, or
``python -m bench.memory --point '{...}'``) so that no allocator cache from an earlier point hides or
inflates the next one; inside it, the kernel's peak
RSS counter is reset right before the measured step (``/proc/self/clear_refs``), so the figure is
the step's own peak above the resident set it started from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# (label, method name, gradient checkpointing of chained velocity calls)
VARIANTS: dict[str, tuple[str, bool]] = {
    "LeapAlign": ("leapalign", True),
    "ReFL": ("refl", True),
    "DRaFT-LV": ("draft_lv", True),
    "DRTune": ("drtune", True),
    "Full backprop (checkpointed)": ("full_backprop", True),
    "Full backprop (no checkpointing)": ("full_backprop", False),
}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS; False where not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def pin_malloc(threshold: int = 128 * 1024) -> bool:
    """Pin glibc's mmap/trim thresholds so freed large blocks return to the OS at once.

    By default glibc raises its mmap threshold after large frees and then serves later large
    allocations from a heap it keeps: a step could reuse an earlier step's retained pages and show no
    RSS growth. Returns False where glibc is not the allocator.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def method_config(method: str, steps: int, checkpointing: bool):
    from leapalign.config import MethodConfig

    extra = {}
    if method == "leapalign":
        # a genuine two-step leap (j < N): the pair does not change the cost, j = N would halve it
        extra = {"k": steps // 4, "j": max(steps // 4 + 1, steps // 2)}
    return MethodConfig(name=method, gradient_checkpointing=checkpointing, **extra)


def measure_point(world_name: str, label: str, steps: int, batch: int = 1) -> dict:
    """One (model size, method variant, N) point, in this process."""
    import torch

    from bench import comfy_env as env
    from leapalign.methods import compute_loss

    env.set_threads()
    pinned = pin_malloc()
    method, checkpointing = VARIANTS[label]
    world = env.make_world(world_name, batch=batch)
    weights = world.parameter_storages()
    generator = torch.Generator().manual_seed(0)

    def step(config, sigmas, meter=None):
        # backward inside the sampler body: a checkpointed velocity call is recomputed during backward
        # and needs the guider's model, which ComfyUI removes when sampling returns
        def body(velocity, x_init, grid, inner):
            if meter is None:
                result = compute_loss(config, velocity, world.decoder, world.reward, x_init, grid, world.prompts,
                                      generator)
            else:
                with env.saved_bytes_meter(weights) as stats:
                    result = compute_loss(config, velocity, world.decoder, world.reward, x_init, grid,
                                          world.prompts, generator)
                meter.update(stats)
            result.loss.backward()
            return result, x_init

        with env.seam_context():
            return env.run_body(world, body, world.noise(), sigmas)

    step(method_config("leapalign", 2, True), world.sigmas(2))  # warm-up: lazy init, first allocations
    world.lora.zero_grad(set_to_none=True)

    # the decoder + reward's share (constant in N; DRaFT-LV decodes 1 + copies times)
    decode_stats: dict = {}
    with env.seam_context(), env.saved_bytes_meter(weights) as stats:
        latent = world.noise().requires_grad_(True)
        world.reward(world.decoder(latent), world.prompts).sum().backward()
        decode_stats.update(stats)

    config = method_config(method, steps, checkpointing)
    sigmas = world.sigmas(steps)
    meter: dict = {}
    rss_before = _status_kib("VmRSS")
    peak_reset = reset_peak_rss()
    start = time.perf_counter()
    result = step(config, sigmas, meter)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    grads = [p.grad for p in world.lora.parameters() if p.grad is not None]
    return {
        "world": world_name, "variant": label, "method": method, "gradient_checkpointing": checkpointing,
        "steps": steps, "batch": batch,
        "saved_activation_bytes": meter["activation_bytes"], "saved_weight_bytes": meter["weight_bytes"],
        "saved_tensor_count": meter["tensors"], "decode_reward_saved_bytes": decode_stats["activation_bytes"],
        "rss_before_bytes": rss_before * 1024, "peak_rss_bytes": peak * 1024,
        "step_peak_bytes": (peak - rss_before) * 1024 if peak_reset else None,
        "peak_reset": peak_reset, "malloc_pinned": pinned, "seconds": seconds, "loss": float(result.loss.detach()),
        "velocity_evals": result.metrics.get("velocity_evals"),
        "lora_grad_norm": float(torch.stack([g.norm() for g in grads]).norm()) if grads else 0.0,
    }


def run_point_subprocess(world_name: str, label: str, steps: int, timeout: float = 900) -> dict:
    point = json.dumps({"world": world_name, "variant": label, "steps": steps})
    proc = subprocess.run([sys.executable, "-m", "bench.memory", "--point", point], cwd=str(REPO),
                          capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"world": world_name, "variant": label, "steps": steps,
            "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-3:]}"}


def _forked_point(point: tuple) -> dict:
    try:
        return measure_point(*point)
    except Exception as exc:  # report, do not kill the sweep
        return {"world": point[0], "variant": point[1], "steps": point[2], "error": f"{type(exc).__name__}: {exc}"}


def sweep(worlds=("tiny", "large"), steps=(4, 10, 25, 50), variants=tuple(VARIANTS), workers: int = 2,
          log=print, fork: bool = True) -> list[dict]:
    """Every (world, variant, N) point in a process of its own, ``workers`` at a time (peak RSS is per process).

    ``fork=True`` boots ComfyUI once here and forks a fresh child per point (``maxtasksperchild=1``),
    which saves the ~15 s boot per point; ``fork=False`` starts ``python -m bench.memory`` per point.
    Call it before this process has run any multi-threaded torch op (forking after is unsafe).
    """
    import multiprocessing

    from bench import comfy_env as env

    points = [(w, v, n) for w in worlds for v in variants for n in steps]
    points.sort(key=lambda p: (p[0] != "large", -p[2]))  # longest first, so the workers finish together
    results = []
    start = time.perf_counter()

    def report(point, out):
        log(f"  memory {point[0]:5s} {point[1]:32s} N={point[2]:3d}: "
            + (out.get("error") or f"saved {out['saved_activation_bytes'] / 2**20:7.1f} MiB, "
               f"step peak {(out['step_peak_bytes'] or 0) / 2**20:7.1f} MiB") + f" (t={time.perf_counter() - start:.0f} s)")

    if fork:
        pin_malloc()
        env.set_threads()
        env.boot()
        context = multiprocessing.get_context("fork")
        with context.Pool(processes=workers, maxtasksperchild=1) as pool:
            for point, out in zip(points, pool.imap(_forked_point, points)):
                report(point, out)
                results.append(out)
        return results
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for point, out in zip(points, pool.map(lambda p: run_point_subprocess(*p), points)):
            report(point, out)
            results.append(out)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--point", required=True, help='JSON: {"world": "tiny", "variant": "LeapAlign", "steps": 10}')
    args = parser.parse_args(argv)
    point = json.loads(args.point)
    out = measure_point(point["world"], point["variant"], int(point["steps"]), int(point.get("batch", 1)))
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
