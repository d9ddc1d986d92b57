"""Rollout capture and leap loss as two graph blocks, so a user can look inside one LeapAlign step.

*Rollout capture* samples exactly what ``KSampler`` (euler, same scheduler, seed and guidance) would
produce and keeps the latents x_k, x_j of a (k, j) pair; *Leap loss* runs the two-step leap on that
rollout and reports the loss with its diagnostics. Neither trains anything: the training node does
both inside its loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..leapalign.config import MethodConfig
from ..leapalign.methods import leap_loss_from_rollout
from ..leapalign.rollout import Rollout, capture_rollout
from ..leapalign.sigmas import sample_pair
from .adapters import frozen, make_decoder, model_sigmas, sample_with
from .autograd_seam import autograd_enabled
from .common import CATEGORY, node_error
from .families import family_of

LEAP_ROLLOUT = "LEAP_ROLLOUT"
LEAP_REWARD = "LEAP_REWARD"


@dataclass
class CapturedRollout:
    """A core :class:`Rollout` plus what is needed to evaluate the model on it again."""

    rollout: Rollout
    positive: list
    seed: int
    info: dict = field(default_factory=dict)


def _pair_input(value: int) -> int | None:
    return None if value < 0 else int(value)


class LeapAlignRolloutCapture:
    """Euler rollout through ComfyUI's sampler machinery that keeps the latents a leap needs."""

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {
            "required": {
                "model": ("MODEL",),
                "positive": ("CONDITIONING", {"tooltip": "The model's conditioning (CLIPTextEncode; + FluxGuidance for Flux)."}),
                "latent_image": ("LATENT", {"tooltip": "Sets size and batch (e.g. EmptySD3LatentImage); fully denoised."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 1000}),
                "scheduler": (comfy.samplers.SCHEDULER_NAMES, {"default": "simple"}),
                "k": ("INT", {"default": -1, "min": -1, "max": 1000,
                              "tooltip": "Grid index the first leap starts from (0 = noise); -1 draws it from the seed."}),
                "j": ("INT", {"default": -1, "min": -1, "max": 1000,
                              "tooltip": "Grid index of the intermediate point (k < j <= steps); -1 draws it from the seed."}),
            },
        }

    RETURN_TYPES = (LEAP_ROLLOUT, "LATENT")
    RETURN_NAMES = ("rollout", "latent")
    FUNCTION = "capture"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Samples like KSampler with euler (cfg 1, the model's sigmas) and keeps x_k and x_j for the "
                   "LeapAlign leap loss. The latent output is the sampled image: decode it to look at it.")

    def capture(self, model, positive, latent_image, seed, steps, scheduler, k, j):
        import comfy.model_management
        import comfy.sample

        name = "LeapAlign Rollout Capture"
        try:
            family_of(model)
            generator = torch.Generator().manual_seed(int(seed))
            pair = sample_pair(steps, generator, _pair_input(k), _pair_input(j))
        except ValueError as exc:
            raise node_error(name, str(exc)) from None
        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        sigmas = model_sigmas(model, scheduler, steps)

        def body(velocity, x_init, grid, inner):
            rollout = capture_rollout(velocity, x_init, grid, keep=set(pair), step_callback=_progress(steps))
            rollout.pair = pair
            return rollout, rollout.final

        rollout, samples = sample_with(model, positive, noise, sigmas, body, seed=seed, latent_image=latent)
        rollout.sigmas = rollout.sigmas.cpu()
        captured = CapturedRollout(rollout, positive, int(seed), {"scheduler": scheduler, "steps": steps})
        out = latent_image.copy()
        out["samples"] = samples.to(comfy.model_management.intermediate_device())
        return (captured, out)


def _progress(total: int):
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)
    return lambda i: bar.update_absolute(i + 1, total)


def _prompt_list(text: str, batch: int) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("the prompt is empty; give the prompt the images were sampled for (the reward scores against it)")
    if len(lines) == 1:
        return lines * batch
    if len(lines) != batch:
        raise ValueError(f"got {len(lines)} prompt lines for a batch of {batch}; give one line, or one per image")
    return lines


def format_diagnostics(metrics: dict) -> str:
    def fmt(value):
        if isinstance(value, list):
            return "[" + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value) + "]"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    keys = ("loss", "reward", "rewards", "d_j", "d_0", "weights", "k", "j", "sigma_k", "sigma_j", "alpha", "hinge_lambda")
    return "\n".join(f"{key}: {fmt(metrics[key])}" for key in keys if key in metrics)


class LeapAlignLeapLoss:
    """LeapAlign's two-step leap and weighted hinge loss on a captured rollout (no training)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "rollout": (LEAP_ROLLOUT,),
                "vae": ("VAE",),
                "reward": (LEAP_REWARD,),
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "The prompt the reward scores against (one line, or one per image)."}),
                "alpha": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                    "tooltip": "Gradient discount of the nested path (0 = none, 1 = full)."}),
                "hinge_lambda": ("FLOAT", {"default": -1.0, "min": -1000.0, "max": 1000.0, "step": 0.01,
                                           "tooltip": "Hinge threshold on the reward's scale; -1 uses the reward's default."}),
                "tau": ("FLOAT", {"default": 0.1, "min": 1e-4, "max": 10.0, "step": 0.01,
                                  "tooltip": "Floor of the trajectory distances in the similarity weight."}),
            },
        }

    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("loss", "diagnostics")
    FUNCTION = "compute"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = "The LeapAlign loss of one rollout, with reward, trajectory distances d_j/d_0, weight, k and j."

    def compute(self, model, rollout, vae, reward, prompt, alpha, hinge_lambda, tau):
        name = "LeapAlign Leap Loss"
        captured: CapturedRollout = rollout
        core = captured.rollout
        try:
            family_of(model)
            prompts = _prompt_list(prompt, core.batch_size)
            config = MethodConfig(name="leapalign", alpha=alpha, tau=tau,
                                  hinge_lambda=None if hinge_lambda == -1.0 else hinge_lambda)
        except ValueError as exc:
            raise node_error(name, str(exc)) from None

        # Nothing here requires grad (the model is frozen, nothing is trained), so no graph is built
        # and no seam is needed; the core still insists on leaving inference mode.
        def body(velocity, x_init, grid, inner):
            with frozen(inner.diffusion_model):
                decoder = make_decoder(vae, model)
                try:
                    result = leap_loss_from_rollout(config, velocity, decoder, reward, core, prompts)
                except ValueError as exc:
                    raise node_error(name, str(exc)) from None
            return result, core.final.to(x_init.device)

        noise = torch.zeros_like(core.final).cpu()
        with autograd_enabled():
            result, _ = sample_with(model, captured.positive, noise, core.sigmas, body, seed=captured.seed)
        text = format_diagnostics(result.metrics)
        return {"ui": {"text": [text]}, "result": (float(result.loss.detach()), text)}


NODE_CLASS_MAPPINGS = {
    "LeapAlignRolloutCapture": LeapAlignRolloutCapture,
    "LeapAlignLeapLoss": LeapAlignLeapLoss,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LeapAlignRolloutCapture": "LeapAlign Rollout Capture",
    "LeapAlignLeapLoss": "LeapAlign Leap Loss",
}
