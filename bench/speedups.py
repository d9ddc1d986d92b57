"""Where a LeapAlign step's time and memory go, and what each candidate speed-up buys.

Measured, each against its own reference in the same process (interleaved reps, medians):

* bf16 autocast for the no-grad rollout (time, and how far the final latent moves);
* the training rollout's per-call overhead (the LoRA hooks; the out-of-place-adds seam is skipped
  without grad) vs ``KSampler`` on the model with the same LoRA merged, and vs the seam forced on;
* gradient checkpointing of the two leaps: none, whole velocity call, each transformer block
  (saved bytes held between forward and backward, time, and gradient agreement with no checkpointing);
* decode: the share of decode + reward in a step, and what one redundant decode would add;
* trajectory storage: keeping every latent vs only x_k, x_j, x_0.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.checkpoint import checkpoint

from bench import comfy_env as env
from bench.block_checkpoint import lora_for_step, seam_clone
from bench.speed import _sig, leap_pair

TRAINING_ROLLOUT = "training rollout (LoRA hooks, seam skipped without grad), fp32"
SEAM_FORCED_ROLLOUT = "training rollout with the seam forced on (as before acd6ca1), fp32"
KSAMPLER_MERGED = "KSampler, LoRA merged into weights"


def _median_interleaved(fns: dict, reps: int, log=print, label: str = "") -> dict:
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for rep in range(reps):
        order = list(fns) if rep % 2 == 0 else list(reversed(list(fns)))
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    log(f"  {label}: " + ", ".join(f"{n} {m:.3f} s" for n, m in medians.items()))
    return {"median_seconds": medians, "seconds": times}


def rollout_speedups(world, steps: int, reps: int, log=print) -> dict:
    """fp32 vs bf16-autocast rollout, and the training rollout's hook/seam overhead vs KSampler."""
    from leapalign.rollout import capture_rollout

    adapters = env.pack_module("nodes.adapters")
    compat = env.pack_module("nodes.comfy_compat")
    comfy_nodes = env.comfy_nodes()
    sigmas = world.sigmas(steps)
    noise = world.noise(7)
    finals = {}

    def rollout(model, autocast: bool, key: str):
        def body(velocity, x_init, grid, inner):
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
            with ctx:
                out = capture_rollout(velocity, x_init, grid, keep={0, steps // 4, steps // 2})
            return out, out.final

        def run():
            with torch.inference_mode():
                finals[key] = adapters.sample_with(model, world.positive, noise, sigmas, body)[0].final
        return run

    def seam_forced_clone():
        """The training clone as it was before the seam was skipped on no-grad calls (for comparison)."""
        import comfy.patcher_extension

        seam = env.pack_module("nodes.autograd_seam").OutOfPlaceAdds

        def wrapper(executor, *args, **kwargs):
            with seam(), compat.training_mode(), world.lora.applied(executor.class_obj):
                return executor(*args, **kwargs)

        clone = world.model.clone()
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "bench_seam_forced", wrapper)
        return clone

    merged = compat.apply_lora(world.model, world.lora.kohya_state_dict())
    latent = {"samples": torch.zeros_like(noise)}

    def ksampler_merged():
        with torch.inference_mode():
            comfy_nodes.KSampler().sample(merged, 0, steps, 1.0, "euler", "simple", world.positive, world.positive,
                                          latent)

    fns = {
        TRAINING_ROLLOUT: rollout(world.trainer, False, "fp32"),
        "training rollout, bf16 autocast": rollout(world.trainer, True, "bf16"),
        SEAM_FORCED_ROLLOUT: rollout(seam_forced_clone(), False, "seam"),
        KSAMPLER_MERGED: ksampler_merged,
        "plain model, no LoRA (capture)": rollout(world.model, False, "plain"),
    }
    out = _median_interleaved(fns, reps, log, f"rollout N={steps}")
    ref = finals["fp32"]
    out["bf16_final_rel_diff"] = float((finals["bf16"] - ref).norm() / ref.norm())
    out["seam_forced_vs_training_max_diff"] = float((finals["seam"] - ref).abs().max())
    return out


def leap_checkpointing(world, steps: int, reps: int, log=print) -> dict:
    """The two leaps (+ decode/reward and backward) with no / per-call / per-block checkpointing."""
    k, j = leap_pair(steps)
    sigmas = world.sigmas(steps)
    weights = world.parameter_storages()
    x_k = world.noise(3) * float(sigmas[k])
    clones = {"none": seam_clone(world.model, False), "velocity call": seam_clone(world.model, False),
              "transformer blocks": seam_clone(world.model, True)}
    grads, saved = {}, {}
    adapters = env.pack_module("nodes.adapters")

    def leap(mode: str):
        def body(velocity, x_init, grid, inner):
            vel = velocity
            if mode == "velocity call":
                def vel(x, s):
                    return checkpoint(velocity, x, s, use_reentrant=False)
            b = x_init.shape[0]
            with env.saved_bytes_meter(weights) as stats:
                v_k = vel(x_k, _sig(grid[k], b))
                x_j = x_k - (grid[k] - grid[j]) * v_k
                v_j = vel(x_j, _sig(grid[j], b))
                x_0 = x_j - grid[j] * v_j
                scores = world.reward(world.decoder(x_0), world.prompts)
            saved[mode] = dict(stats)
            scores.sum().backward()
            return None, x_init

        def run():
            world.lora.zero_grad(set_to_none=True)
            with env.seam_context(), lora_for_step(world.lora, world.model):
                adapters.sample_with(clones[mode], world.positive, world.noise(), sigmas, body,
                                     prepare_model=env.prepare)
            grads[mode] = torch.cat([p.grad.flatten() for p in world.lora.parameters()])
        return run

    out = _median_interleaved({m: leap(m) for m in clones}, reps, log, f"leap checkpointing N={steps}")
    ref = grads["none"]
    out["grad_rel_diff_vs_none"] = {m: float((g - ref).norm() / ref.norm()) for m, g in grads.items()}
    out["saved_activation_bytes"] = {m: s["activation_bytes"] for m, s in saved.items()}
    return out


def decode_and_storage(world, steps: int, reps: int, log=print) -> dict:
    """Decode/reward share of a step, one redundant no-grad decode, and full-trajectory storage."""
    from leapalign.rollout import capture_rollout

    adapters = env.pack_module("nodes.adapters")
    sigmas = world.sigmas(steps)
    latent = world.noise(5)
    kept_bytes = {}

    def decode_grad():
        with env.seam_context():
            x = latent.clone().requires_grad_(True)
            world.reward(world.decoder(x), world.prompts).sum().backward()

    def decode_nograd():
        with torch.no_grad():
            world.decoder(latent)

    def rollout(keep):
        def body(velocity, x_init, grid, inner):
            out = capture_rollout(velocity, x_init, grid, keep=keep)
            kept_bytes[str(keep is None)] = sum(t.numel() * t.element_size() for t in out.latents.values())
            return out, out.final

        def run():
            with torch.inference_mode():
                adapters.sample_with(world.trainer, world.positive, latent, sigmas, body)
        return run

    out = _median_interleaved({"decode + reward with backward": decode_grad, "redundant no-grad decode": decode_nograd,
                               "rollout keeping x_k, x_j, x_0": rollout({0, steps // 4, steps // 2}),
                               "rollout keeping every latent": rollout(None)}, reps, log, f"decode/storage N={steps}")
    out["kept_latent_bytes"] = {"x_k, x_j, x_0": kept_bytes["False"], "every latent": kept_bytes["True"]}
    return out


def run(world_name: str = "large", steps: int = 25, reps: int = 3, log=print) -> dict:
    world = env.make_world(world_name)
    return {
        "world": world_name, "steps": steps, "reps": reps, "world_info": world.info,
        "rollout": rollout_speedups(world, steps, reps, log),
        "leap_checkpointing": leap_checkpointing(world, steps, reps, log),
        "decode_and_storage": decode_and_storage(world, steps, reps, log),
    }
