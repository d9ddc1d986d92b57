"""Rollout capture and leap loss as two graph blocks, so a user can look inside one LeapAlign step.

*Rollout capture* samples exactly what ``KSampler`` (euler, same scheduler, seed and guidance) would
produce and keeps the latents x_k, x_j of a (k, j) pair; *Leap loss* runs the two-step leap on that
rollout and reports the loss with its diagnostics. Neither trains anything: the training node does
both inside its loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from comfy_api.latest import io

from ..leapalign.config import MethodConfig
from ..leapalign.methods import leap_loss_from_rollout
from ..leapalign.rollout import Rollout, capture_rollout
from ..leapalign.sigmas import sample_pair
from . import sockets, widgets
from .adapters import frozen, make_decoder, model_sigmas, sample_with
from .autograd_seam import autograd_enabled
from .common import CATEGORY, node_error
from .families import family_of


@dataclass
class CapturedRollout:
    """A core :class:`Rollout` plus what is needed to evaluate the model on it again."""

    rollout: Rollout
    positive: list
    seed: int
    info: dict = field(default_factory=dict)


def _pair_input(value: int) -> int | None:
    return None if value < 0 else int(value)


class LeapAlignRolloutCapture(io.ComfyNode):
    """Euler rollout through ComfyUI's sampler machinery that keeps the latents a leap needs."""

    DISPLAY_NAME = "LeapAlign Rollout Capture"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LeapAlignRolloutCapture", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Samples like KSampler with euler (cfg 1, the model's sigmas) and keeps x_k and x_j for the "
                        "LeapAlign leap loss. The latent output is the sampled image: decode it to look at it.",
            inputs=[widgets.model("The model to sample (frozen; nothing is trained)."),
                    io.Conditioning.Input("positive", tooltip=(
                        "The model's conditioning (CLIPTextEncode; + FluxGuidance for Flux).")),
                    io.Latent.Input("latent_image", tooltip=(
                        "Sets size and batch (e.g. EmptySD3LatentImage); fully denoised.")),
                    widgets.seed(tooltip="Noise seed (as KSampler's), and the draw of (k, j) when they are -1."),
                    widgets.sampling_steps(20, id="steps"), widgets.scheduler(),
                    io.Int.Input("k", default=-1, min=-1, max=1000, tooltip=(
                        "Grid index the first leap starts from (0 = noise); -1 draws it from the seed.")),
                    io.Int.Input("j", default=-1, min=-1, max=1000, tooltip=(
                        "Grid index of the intermediate point (k < j <= steps); -1 draws it from the seed.")),
                    sockets.Method.Input("method", optional=True, tooltip=(
                        "A LeapAlign Method block: its pair sampling draws (k, j); unconnected: the released "
                        "code's."))],
            outputs=[sockets.Rollout.Output("rollout", display_name="rollout", tooltip="The rollout; connect it to LeapAlign Leap Loss."),
                     io.Latent.Output("latent", display_name="latent", tooltip="The sampled latent (decode it to look at it).")])

    @classmethod
    def validate_inputs(cls, scheduler) -> bool | str:
        return widgets.combo_problem(cls, scheduler=scheduler)

    @classmethod
    def execute(cls, model, positive, latent_image, seed, steps, scheduler, k, j,
                method: MethodConfig | None = None) -> io.NodeOutput:
        import comfy.model_management
        import comfy.sample

        scheme = (method or MethodConfig()).pair_sampling
        try:
            family_of(model)
            generator = torch.Generator().manual_seed(int(seed))
            pair = sample_pair(steps, generator, _pair_input(k), _pair_input(j), scheme=scheme)
        except ValueError as exc:
            raise node_error(cls.DISPLAY_NAME, str(exc)) from None
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
        return io.NodeOutput(captured, out)


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


class LeapAlignLeapLoss(io.ComfyNode):
    """LeapAlign's two-step leap and weighted hinge loss on a captured rollout (no training)."""

    DISPLAY_NAME = "LeapAlign Leap Loss"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LeapAlignLeapLoss", display_name=cls.DISPLAY_NAME, category=CATEGORY, is_output_node=True,
            description="The LeapAlign loss of one rollout, with reward, trajectory distances d_j/d_0, weight, k and j.",
            inputs=[widgets.model("The model the rollout was captured with."),
                    sockets.Rollout.Input("rollout", tooltip="LeapAlign Rollout Capture's rollout."),
                    widgets.vae(),
                    sockets.Reward.Input("reward", tooltip="The reward that scores the leap's x_0."),
                    io.String.Input("prompt", multiline=True, default="", tooltip=(
                        "The prompt the reward scores against (one line, or one per image).")),
                    sockets.Method.Input("method", optional=True, tooltip=(
                        "A LeapAlign Method block (alpha, tau, hinge, weighting); unconnected: the released "
                        "code's defaults."))],
            outputs=[io.Float.Output("loss", display_name="loss", tooltip="The weighted hinge loss of the leap."),
                     io.String.Output("diagnostics", display_name="diagnostics", tooltip="loss, reward, d_j, d_0, weights, k, j, sigmas.")])

    @classmethod
    def execute(cls, model, rollout, vae, reward, prompt, method: MethodConfig | None = None) -> io.NodeOutput:
        captured: CapturedRollout = rollout
        core = captured.rollout
        config = method or MethodConfig()
        try:
            family_of(model)
            prompts = _prompt_list(prompt, core.batch_size)
            if config.name != "leapalign":
                raise ValueError(f"the method input is {config.name}; the leap loss needs a LeapAlign Method block")
        except ValueError as exc:
            raise node_error(cls.DISPLAY_NAME, str(exc)) from None

        # Nothing here requires grad (the model is frozen, nothing is trained), so no graph is built
        # and no seam is needed; the core still insists on leaving inference mode.
        def body(velocity, x_init, grid, inner):
            with frozen(inner.diffusion_model):
                decoder = make_decoder(vae, model)
                try:
                    result = leap_loss_from_rollout(config, velocity, decoder, reward, core, prompts)
                except ValueError as exc:
                    raise node_error(cls.DISPLAY_NAME, str(exc)) from None
            return result, core.final.to(x_init.device)

        noise = torch.zeros_like(core.final).cpu()
        with autograd_enabled():
            result, _ = sample_with(model, captured.positive, noise, core.sigmas, body, seed=captured.seed)
        text = format_diagnostics(result.metrics)
        return io.NodeOutput(float(result.loss.detach()), text, ui={"text": [text]})


NODES = [LeapAlignRolloutCapture, LeapAlignLeapLoss]
