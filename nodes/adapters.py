"""Turn ComfyUI objects into the core's callables: MODEL -> velocity, VAE -> decoder, CLIP -> prompts.

The velocity is not a re-implementation of ComfyUI's model call. It runs *inside* ComfyUI's own
sampling machinery: :func:`sample_with` drives a ``comfy.samplers.CFGGuider`` (cfg 1, one forward
per step, as the guidance-distilled flow models are sampled) with a custom ``comfy.samplers.Sampler`` whose ``sample`` hands
the guider's denoiser to a body function. So the model is loaded by ``load_models_gpu``, the
conditioning goes through ``process_conds``/``extra_conds`` (guidance, pooled output: whatever the model's family uses), the
initial latent through the model's ``noise_scaling`` and the result through ``process_latent_out``,
and every model wrapper and patch in the graph applies, exactly as for ``KSampler``. The body sees
``v = (x - denoised) / sigma``, the direction ComfyUI's Euler sampler steps along.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .autograd_seam import ensure_autograd_tensors
from .comfy_compat import static_weights_clone
from .families import ModelFamily, family_of, known_families

TRAINING_WRAPPER_KEY = "leapalign_training"
LOADING_WRAPPER_KEY = "leapalign_load_without_grad"


def model_sigmas(model, scheduler: str, steps: int) -> torch.Tensor:
    """The sigma grid ``KSampler`` would use: the model's ``model_sampling`` and scheduler, full denoise."""
    import comfy.samplers

    sampling = model.get_model_object("model_sampling")
    with torch.inference_mode(False):  # an ordinary tensor: methods multiply it into graph-tracked values
        return comfy.samplers.calculate_sigmas(sampling, scheduler, steps).float().cpu().clone()


def latent_channels(model) -> int:
    return int(model.get_model_object("latent_format").latent_channels)


def sample_latent_shape(model, width: int, height: int, downscale: int) -> tuple[int, ...]:
    """One sample's latent shape for a ``width x height`` image, as ``KSampler`` would sample it
    (``downscale``: the family's VAE factor, 8, or 16 for Flux.2).

    Video-VAE latents (``latent_format.latent_dimensions`` 3, e.g. Qwen-Image's Wan 2.1 latents) carry
    a time axis of one frame, ``[C, 1, h, w]``, which ``comfy.sample.fix_empty_latent_channels`` adds
    to an empty image latent; image latents are ``[C, h, w]``.
    """
    latent_format = model.get_model_object("latent_format")
    frames = (1,) * (int(getattr(latent_format, "latent_dimensions", 2)) - 2)
    return (int(latent_format.latent_channels), *frames, height // downscale, width // downscale)


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Stop ``module``'s own parameters from collecting gradients (restored on exit)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        # Weights loaded under the executor's inference mode are inference tensors, whose flag may
        # only be switched back on inside inference mode.
        with torch.inference_mode():
            for p, flag in flags:
                p.requires_grad_(flag)


# --------------------------------------------------------------------------- velocity

BodyFn = Callable[[Callable, torch.Tensor, torch.Tensor, Any], Any]
"""``body(velocity, x_init, sigmas, inner_model) -> (result, final_latent_model_space)``."""


class _BodySampler:
    """Mixed into a ``comfy.samplers.Sampler`` (see :func:`_sampler_class`): a sampler whose sampling loop is handed to ``body`` (see module doc)."""

    def __init__(self, body: BodyFn, prepare_model: Callable | None):
        self.body = body
        self.prepare_model = prepare_model
        self.result: Any = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        inner = model_wrap.inner_model
        if self.prepare_model is not None:
            self.prepare_model(inner)
        sampling = inner.model_sampling
        max_denoise = self.max_denoise(model_wrap, sigmas)
        x_init = sampling.noise_scaling(sigmas[0], noise, latent_image, max_denoise)
        model_options, seed = extra_args["model_options"], extra_args.get("seed")

        def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            denoised = model_wrap(x, sigma, model_options=model_options, seed=seed)
            # k-diffusion's to_d, operand for operand
            return (x - denoised) / sigma.reshape([-1] + [1] * (x.ndim - 1))

        self.result, final = self.body(velocity, x_init, sigmas, inner)
        return sampling.inverse_noise_scaling(sigmas[-1], final)


@functools.cache
def _sampler_class() -> type:
    # Built on first use: importing this module must not need ComfyUI (pytest imports the pack root).
    import comfy.samplers

    return type("LeapAlignBodySampler", (_BodySampler, comfy.samplers.Sampler), {})


def sample_with(model, positive, noise: torch.Tensor, sigmas: torch.Tensor, body: BodyFn, *,
                seed: int = 0, latent_image: torch.Tensor | None = None,
                prepare_model: Callable | None = None) -> tuple[Any, torch.Tensor]:
    """Run ``body`` where a ComfyUI sampler loop would run; returns ``(body result, LATENT samples)``.

    The LATENT samples are what ``KSampler`` would output for the final latent ``body`` returns
    (``inverse_noise_scaling`` then ``process_latent_out``). ``prepare_model(inner_model)`` runs
    after ComfyUI loaded the model and before the body.
    """
    import comfy.samplers

    if latent_image is None:
        latent_image = torch.zeros_like(noise)
    guider = comfy.samplers.CFGGuider(_loading_without_grad(model))
    guider.inner_set_conds({"positive": positive})
    guider.set_cfg(1.0)
    runner = _sampler_class()(body, prepare_model)
    samples = guider.sample(noise, latent_image, runner, sigmas, disable_pbar=True, seed=seed)
    return runner.result, samples


def _no_grad_wrapper(executor, *args, **kwargs):
    with torch.no_grad():
        return executor(*args, **kwargs)


def _loading_without_grad(model):
    """A clone whose model loading (weight patching: other LoRAs, fp8 rounding) records no graph.

    Loading happens inside ``sample_with``, where gradients may be on; patching a weight with autograd
    recording fails on fp8 (``clamp(out=...)``) and would tie the patched weights to a graph.
    """
    import comfy.patcher_extension

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, LOADING_WRAPPER_KEY,
                               _no_grad_wrapper)
    return clone


def training_clone(model, lora, family: ModelFamily | None = None):
    """A clone of ``model`` whose diffusion model runs differentiably with ``lora`` added.

    The family's seam (out-of-place adds, ComfyUI's training switches) and the LoRA hooks are active
    only around the model call, through the patcher wrapper the family names (the diffusion model's,
    or ``apply_model``'s where the model's forward runs no wrappers); the base model and its other
    clones are untouched.
    """
    import comfy.patcher_extension

    from .comfy_compat import training_mode

    family = family or family_of(model)
    kind = getattr(comfy.patcher_extension.WrappersMP, family.wrapper)
    around_apply_model = kind == comfy.patcher_extension.WrappersMP.APPLY_MODEL

    def wrapper(executor, *args, **kwargs):
        root = executor.class_obj.diffusion_model if around_apply_model else executor.class_obj
        # The seam only matters while a graph is recorded; the no-grad rollout needs only the switches.
        seam = family.seam() if torch.is_grad_enabled() else training_mode()
        with seam, lora.applied(root):
            return executor(*args, **kwargs)

    clone = static_weights_clone(model)
    clone.add_wrapper_with_key(kind, TRAINING_WRAPPER_KEY, wrapper)
    return clone


def prepare_for_autograd(inner_model) -> None:
    """Make a just-loaded diffusion model usable by backward (see ``autograd_seam``)."""
    ensure_autograd_tensors(inner_model.diffusion_model)


# --------------------------------------------------------------------------- decoder

def make_decoder(vae, model) -> Callable[[torch.Tensor], torch.Tensor]:
    """``DecoderFn`` for a ComfyUI VAE: model-space latent -> images ``[B, 3, H, W]`` in [0, 1].

    Does what ``VAEDecode`` does after a sampler (``process_latent_out`` of the diffusion model,
    ``first_stage_model.decode``, ``process_output``) but keeps the graph, and keeps channels first.
    Latents with a time axis ``[B, C, T, h, w]`` (Qwen-Image) give ``B * T`` images, frames of a
    sample next to each other, as ``VAEDecode`` gives them; an image VAE decodes such latents frame by frame.
    """
    import comfy.model_management

    comfy.model_management.load_models_gpu([vae.patcher])
    ensure_autograd_tensors(vae.first_stage_model)
    vae.first_stage_model.requires_grad_(False)
    _plain_latent_format_tensors(model.model.latent_format)
    process_latent_out = model.model.process_latent_out

    def decode(latent: torch.Tensor) -> torch.Tensor:
        z = process_latent_out(latent).to(device=vae.device, dtype=vae.vae_dtype)
        if z.ndim == 5 and getattr(vae, "latent_dim", 2) == 2:
            z = z.movedim(2, 1).flatten(0, 1)
        images = vae.process_output(vae.first_stage_model.decode(z).float())
        if images.ndim == 5:  # [B, 3, T, H, W] from a video VAE
            images = images.movedim(2, 1).flatten(0, 1)
        return images.to(latent.device)

    return decode


def _plain_latent_format_tensors(latent_format) -> None:
    """Swap inference tensors held by a latent format (Wan 2.1's per-channel mean and std, made while
    a loader node ran under the executor's inference mode) for ordinary copies autograd can save."""
    with torch.inference_mode(False):
        for name, value in list(vars(latent_format).items()):
            if isinstance(value, torch.Tensor) and value.is_inference():
                setattr(latent_format, name, value.clone())


# --------------------------------------------------------------------------- prompts

class PromptEncoder:
    """CLIP -> conditioning for a list of prompts, as CLIPTextEncode (+ the family's extras) make it.

    Each prompt is encoded once per run (cached by its text). A batch is one CONDITIONING entry with
    the prompts stacked on the batch axis the way the model's family batches them, plus the family's
    extras (a guidance value, for instance), the pooled output and the encoder outputs the family reads
    (``ModelFamily.encoder_extras``).
    """

    def __init__(self, clip, guidance: float = 3.5, family: ModelFamily | None = None):
        if clip is None:
            raise ValueError("the CLIP input is empty; connect the text encoder(s) of the model "
                             "(DualCLIPLoader, TripleCLIPLoader or the checkpoint's CLIP)")
        self.clip = clip
        self.guidance = float(guidance)
        self.family = family or known_families()[0]  # callers that predate families encode for Flux
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]] = {}

    def encode_one(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._encode(prompt)[:2]

    def _encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        if prompt not in self._cache:
            tokens = self.clip.tokenize(prompt)
            cond = self.clip.encode_from_tokens_scheduled(tokens)
            if len(cond) != 1:
                raise ValueError(f"the text encoder returned {len(cond)} scheduled conditionings for one prompt; "
                                 "LeapAlign needs a plain text encoder without scheduled hooks")
            missing = [name for name in self.family.encoder_extras if name not in cond[0][1]]
            if missing:
                raise ValueError(f"the text encoder gives no {', '.join(missing)}, which {self.family.display} needs; "
                                 f"connect the text encoders of a {self.family.display} model")
            with torch.inference_mode(False):
                tensor = cond[0][0].clone()
                pooled = cond[0][1].get("pooled_output")
                pooled = pooled.clone() if pooled is not None else None
                extras = {name: cond[0][1][name].clone() for name in self.family.encoder_extras}
            self._cache[prompt] = (tensor, pooled, extras)
        return self._cache[prompt]

    def __call__(self, prompts: Sequence[str]) -> list:
        encoded = [self._encode(p) for p in prompts]
        tensor = self.family.stack_context([c for c, _, _ in encoded])
        extras: dict[str, Any] = dict(self.family.conditioning_extras(self.guidance))
        if all(p is not None for _, p, _ in encoded):
            extras["pooled_output"] = torch.cat([p for _, p, _ in encoded])
        else:  # encoders without a pooled vector (Flux.2, Chroma, the DiTs): CLIPTextEncode still sets the key
            extras["pooled_output"] = None
        for name in self.family.encoder_extras:
            shapes = sorted({tuple(e[name].shape[1:]) for _, _, e in encoded})
            if len(shapes) > 1:
                raise ValueError(f"prompts of one batch give {name} of different shapes {shapes}, which "
                                 f"{self.family.display} cannot batch; shorten the long prompts or use batch_size 1")
            extras[name] = torch.cat([e[name] for _, _, e in encoded])
        return [[tensor, extras]]


def plain_conditioning(conditioning: list) -> list:
    """A copy of a CONDITIONING whose tensors are ordinary (non-inference) tensors."""
    out = []
    with torch.inference_mode(False):
        for tensor, extras in conditioning:
            extras = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in extras.items()}
            out.append([tensor.clone(), extras])
    return out
