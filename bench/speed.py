"""Speed against the floor: a LeapAlign training step vs (rollout + two velocity evaluations with
backward + decode/reward), and rollout capture vs ComfyUI's own ``KSampler``.

All ratios are taken within one process, with the compared runs interleaved rep by rep so that
load from other processes on a shared machine hits both sides alike; medians are reported.
"""

from __future__ import annotations

import statistics
import time

import torch

from bench import comfy_env as env


def _sig(sigma: torch.Tensor, batch: int) -> torch.Tensor:
    return sigma.reshape(()).expand(batch).clone()


def leap_pair(steps: int) -> tuple[int, int]:
    k = steps // 4
    return k, max(k + 1, steps // 2)


def step_vs_floor(world_name: str = "large", steps: int = 25, reps: int = 5, batch: int = 1, log=print) -> dict:
    """Median step time / median floor time, the floor's parts measured with bare code in the same run."""
    from leapalign.config import MethodConfig
    from leapalign.methods import compute_loss

    world = env.make_world(world_name, batch=batch)
    k, j = leap_pair(steps)
    config = MethodConfig(name="leapalign", k=k, j=j)
    sigmas = world.sigmas(steps)
    params = list(world.lora.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)

    def training_step(seed: int) -> float:
        # as the training node's loss_fn: backward inside the sampler call (LossResult.backward_done)
        def body(velocity, x_init, grid, inner):
            result = compute_loss(config, velocity, world.decoder, world.reward, x_init, grid, world.prompts,
                                  generator)
            result.loss.backward()
            return result, x_init

        start = time.perf_counter()
        with env.seam_context():
            env.run_body(world, body, world.noise(seed), sigmas)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    def floor_parts(seed: int) -> dict:
        def body(velocity, x_init, grid, inner):
            b = x_init.shape[0]
            t0 = time.perf_counter()
            with torch.no_grad():
                x = x_init
                kept = {0: x}
                for i in range(steps):
                    x = x + velocity(x, _sig(grid[i], b)) * (grid[i + 1] - grid[i])
                    if i + 1 in (k, j):
                        kept[i + 1] = x
            t1 = time.perf_counter()
            x_k = kept[k]
            v_k = velocity(x_k, _sig(grid[k], b))
            x_j = x_k - (grid[k] - grid[j]) * v_k
            v_j = velocity(x_j, _sig(grid[j], b))
            x_0 = x_j - grid[j] * v_j
            t2 = time.perf_counter()
            images = world.decoder(x_0)
            scores = world.reward(images, world.prompts)
            t3 = time.perf_counter()
            scores.sum().backward()
            t4 = time.perf_counter()
            return {"rollout": t1 - t0, "two_evals_forward": t2 - t1, "decode_reward_forward": t3 - t2,
                    "backward": t4 - t3}, x_init

        with env.seam_context():
            parts = env.run_body(world, body, world.noise(seed), sigmas)
        optimizer.zero_grad(set_to_none=True)
        return parts

    training_step(0)
    floor_parts(0)  # warm-up
    step_times, floors, ratios = [], [], []
    for rep in range(reps):
        step = training_step(rep + 1)
        parts = floor_parts(rep + 1)
        floor = sum(parts.values())
        step_times.append(step)
        floors.append(parts)
        ratios.append(step / floor)
        log(f"  floor rep {rep}: step {step:.3f} s, floor {floor:.3f} s, ratio {step / floor:.3f}")
    median_floor = {key: statistics.median(p[key] for p in floors) for key in floors[0]}
    floor_total = statistics.median(sum(p.values()) for p in floors)
    return {
        "world": world_name, "steps": steps, "batch": batch, "pair": [k, j], "reps": reps,
        "world_info": world.info,
        "step_seconds": step_times, "floor_parts_seconds": floors,
        "median_step_seconds": statistics.median(step_times), "median_floor_seconds": floor_total,
        "median_floor_parts_seconds": median_floor,
        "ratios": ratios, "median_ratio": statistics.median(ratios), "target": 1.15,
    }


def rollout_vs_ksampler(world_name: str = "large", steps: int = 25, reps: int = 7, batch: int = 1, log=print) -> dict:
    """The rollout-capture node vs ``KSampler`` (euler, simple, cfg 1) on the same model, seed, steps."""
    comfy_nodes = env.comfy_nodes()
    world = env.make_world(world_name, batch=batch)
    rollout_nodes = env.pack_module("nodes.rollout_nodes")
    latent = {"samples": torch.zeros((batch, *world.latent_shape))}
    seed = 1234

    def ksampler() -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = comfy_nodes.KSampler().sample(world.model, seed, steps, 1.0, "euler", "simple", world.positive,
                                                world.positive, latent)[0]["samples"]
        return time.perf_counter() - start, out

    def capture() -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        with torch.inference_mode():
            _, out = rollout_nodes.LeapAlignRolloutCapture.execute(world.model, world.positive, latent, seed,
                                                                  steps, "simple", -1, -1).result
        return time.perf_counter() - start, out["samples"]

    ksampler()
    capture()
    ks_times, cap_times, ratios = [], [], []
    max_diff = 0.0
    for rep in range(reps):
        # alternate the order so neither side always runs second
        if rep % 2:
            t_cap, a = capture()
            t_ks, b = ksampler()
        else:
            t_ks, b = ksampler()
            t_cap, a = capture()
        ks_times.append(t_ks)
        cap_times.append(t_cap)
        ratios.append(t_cap / t_ks)
        max_diff = max(max_diff, float((a - b).abs().max()))
        log(f"  rollout rep {rep}: KSampler {t_ks:.3f} s, capture {t_cap:.3f} s, ratio {t_cap / t_ks:.3f}")
    return {
        "world": world_name, "steps": steps, "batch": batch, "reps": reps,
        "ksampler_seconds": ks_times, "capture_seconds": cap_times, "ratios": ratios,
        "median_ksampler_seconds": statistics.median(ks_times), "median_capture_seconds": statistics.median(cap_times),
        # paired (same-rep) ratios: load from other processes shifts both sides of a pair alike
        "median_ratio": statistics.median(ratios),
        "ratio_of_medians": statistics.median(cap_times) / statistics.median(ks_times), "max_abs_diff_vs_ksampler": max_diff, "target": 1.05,
    }
