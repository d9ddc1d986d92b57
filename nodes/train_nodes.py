"""Train a LoRA with LeapAlign (or a baseline) inside one node execution.

The node is glue: it binds the graph's MODEL/CLIP/VAE/reward into the core's callables
(``nodes.adapters``), attaches a hook-based LoRA (``leapalign.lora``) to a training clone of the
model, and runs the core loop (``leapalign.train.train``). Every optimizer step updates a ComfyUI
progress bar and checks for Cancel, so an interrupted run stops at the next step; nothing is written
to ``models/loras`` here (that is the Save LoRA node's job), so a cancelled run leaves no LoRA file.
Under ``torch.distributed`` (the headless CLI initialises it) the loop is data-parallel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from ..leapalign.checkpoint import RUNS_FOLDER, CheckpointError, checkpoint_step, newest_readable
from ..leapalign.config import METHOD_NAMES, MethodConfig, OptimConfig, TrainConfig
from ..leapalign.distributed import DistContext
from ..leapalign.lora import LoRAAdapter, LoRAConfig, LoRAError, LoRAMetadata
from ..leapalign.methods import compute_loss
from ..leapalign.prompts import PromptListError, require_prompts
from ..leapalign.run_files import METRICS_FILE, STOP_ENV, existing_results, trim_metrics
from ..leapalign.runlock import RunLock, RunLockedError
from ..leapalign.train import train
from .adapters import (
    PromptEncoder,
    make_decoder,
    model_sigmas,
    prepare_for_autograd,
    sample_latent_shape,
    sample_with,
    training_clone,
)
from .autograd_seam import autograd_enabled
from .comfy_compat import apply_lora
from .common import CATEGORY, LeapAlignNodeError, node_error
from .cpu_threads import threads_for_model
from .families import family_of, preset_names
from .flux_shift import SHIFT_MODES, schedule_mu, training_model
from .live_view import LiveView
from .lora_nodes import LEAP_LORA, TrainedLoRA
from .memory_options import PRESETS, MemorySetup, check_fits
from .paths import resolve_inside
from .prompt_nodes import PROMPT_LIST
from .rollout_nodes import LEAP_REWARD

LEAP_METRICS = "LEAP_METRICS"
NODE_NAME = "LeapAlign Train LoRA"


def base_model_name(prompt: dict | None, node_id: str | None) -> str:
    """The checkpoint file the ``model`` input comes from, found by walking the API prompt upstream."""
    if not prompt or node_id not in prompt:
        return ""
    link = prompt[node_id].get("inputs", {}).get("model")
    for _ in range(64):  # a graph is acyclic; the bound only guards malformed prompts
        if not isinstance(link, list) or link[0] not in prompt:
            return ""
        inputs = prompt[link[0]].get("inputs", {})
        for key in ("unet_name", "ckpt_name"):
            if isinstance(inputs.get(key), str):
                return inputs[key]
        link = inputs.get("model")
    return ""


def _check_reward_fits(decoder, reward, shape, device) -> None:
    """Decode one latent of the training size and score it, so a misfit fails before step 1."""
    try:
        with torch.no_grad():
            images = decoder(torch.zeros((1, *shape), device=device))
            scores = reward(images, ["a test prompt"])
    except (ValueError, TypeError, RuntimeError) as exc:
        raise node_error(NODE_NAME, f"the reward cannot score the decoded images of this size "
                                    f"(latent {list(shape)}): {exc}") from None
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (1,):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise node_error(NODE_NAME, f"the reward must return one score per image, got {got}")


class _StepReporter:
    """Progress bar + cancel point after every optimizer step, and metrics.jsonl on rank 0."""

    def __init__(self, total: int, log_path: Path | None, view: LiveView | None = None):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(total)
        self.total = total
        self.log_path = log_path
        self.view = view

    def __call__(self, step: int, metrics: dict) -> None:
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(metrics, default=float) + "\n")
        self.bar.update_absolute(step, self.total, self.view.update(step, metrics) if self.view else None)


def _stop_requested() -> bool:
    """ComfyUI's Cancel, or the headless trainer's Ctrl-C / SIGTERM (see ``leapalign.run_files.STOP_ENV``)."""
    import comfy.model_management

    return comfy.model_management.processing_interrupted() or os.environ.get(STOP_ENV) == "1"


FIXED_BY_CHECKPOINT = ("method", "alpha", "hinge_lambda", "tau", "lora_rank", "lora_alpha", "lora_targets", "seed",
                       "batch_size", "grad_accumulation", "width", "height", "sampling_steps", "scheduler", "guidance",
                       "pair_sampling", "sigma_shift")
"""Inputs a resumed run must keep: changing any of them would make it another run (with the prompts).
``steps``, ``learning_rate``, ``weight_decay``, ``grad_clip``, ``ema_decay`` and ``memory_preset`` may change
on resume."""

METADATA_NAMES = {"lora_rank": "rank", "lora_targets": "targets", "learning_rate": "lr"}


def _fixed_settings(settings: dict, prompts: list[str]) -> dict:
    digest = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()[:16]
    return {**{key: settings[key] for key in FIXED_BY_CHECKPOINT}, "prompts_sha256": digest}


def _metadata_parameters(settings: dict, prompts: list[str], changes: list[dict]) -> dict:
    skip = ("checkpoint_every", "run_name", "resume", "steps", "method")
    out = {METADATA_NAMES.get(key, key): value for key, value in settings.items() if key not in skip}
    return {**out, "prompt_count": len(prompts), "setting_changes": changes}


def _prepare_run_folder(run_dir: Path, resume: bool, is_main: bool) -> Path | None:
    """Check the run folder against ``resume``; on resume, the checkpoint to use (metrics trimmed to it).

    A fresh run never starts over an earlier run's results (they would mix); a resumed run continues
    from the newest readable checkpoint, its metrics.jsonl cut back to that step (torn lines dropped).
    """
    if not resume:
        existing = existing_results(run_dir) if is_main else []  # other ranks: rank 0 may be writing already
        if existing:
            raise ValueError(f"{run_dir} already holds an earlier run ({', '.join(p.name for p in existing[-2:])}); "
                             "turn resume on to continue it, or give this run another run_name")
        return None
    checkpoint, warnings = newest_readable(run_dir)
    for warning in warnings:
        logging.getLogger("leapalign").warning(warning)
    if checkpoint is None:
        raise ValueError(f"resume is on but {run_dir} holds no readable checkpoint"
                         + (f" ({'; '.join(warnings)})" if warnings else "") + "; turn resume off to start fresh")
    if is_main:
        trim_metrics(run_dir / METRICS_FILE, checkpoint_step(checkpoint))
    return checkpoint


class LeapAlignTrainLoRA:
    """LeapAlign LoRA training on a flow-matching MODEL (see ``nodes/families``); outputs the model with the LoRA applied."""

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "vae": ("VAE",),
                "reward": (LEAP_REWARD,),
                "prompts": (PROMPT_LIST,),
                "method": (list(METHOD_NAMES), {"default": "leapalign",
                                                "tooltip": "leapalign, or a baseline for comparison."}),
                "alpha": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.05,
                                    "tooltip": "LeapAlign's gradient discount on the nested path."}),
                "hinge_lambda": ("FLOAT", {"default": -1.0, "min": -1000.0, "max": 1000.0, "step": 0.01,
                                           "tooltip": "Hinge threshold on the reward's scale; -1 = the reward's default."}),
                "tau": ("FLOAT", {"default": 0.1, "min": 1e-4, "max": 10.0, "step": 0.01}),
                "lora_rank": ("INT", {"default": 16, "min": 1, "max": 1024}),
                "lora_alpha": ("FLOAT", {"default": 16.0, "min": 0.01, "max": 4096.0, "step": 0.5}),
                "lora_targets": (preset_names(), {"default": "attention+mlp"}),
                "learning_rate": ("FLOAT", {"default": 1e-5, "min": 1e-8, "max": 1.0, "step": 1e-6}),
                "weight_decay": ("FLOAT", {"default": 1e-4, "min": 0.0, "max": 1.0, "step": 1e-5}),
                "grad_clip": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.1,
                                        "tooltip": "Gradient-norm clip; 0 disables."}),
                "ema_decay": ("FLOAT", {"default": 0.995, "min": 0.0, "max": 0.9999, "step": 0.001,
                                        "tooltip": "EMA of the LoRA weights (the EMA is what is output); 0 disables."}),
                "steps": ("INT", {"default": 300, "min": 1, "max": 1000000}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096,
                                       "tooltip": "Prompts per micro-batch over all ranks."}),
                "grad_accumulation": ("INT", {"default": 1, "min": 1, "max": 1024}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "width": ("INT", {"default": 720, "min": 16, "max": 4096, "step": 16}),
                "height": ("INT", {"default": 720, "min": 16, "max": 4096, "step": 16}),
                "sampling_steps": ("INT", {"default": 25, "min": 1, "max": 1000}),
                "scheduler": (comfy.samplers.SCHEDULER_NAMES, {"default": "simple"}),
                "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1,
                                       "tooltip": "Guidance embedding during training rollouts (Flux); ignored by models without one."}),
                "checkpoint_every": ("INT", {"default": 50, "min": 0, "max": 1000000,
                                             "tooltip": "Steps between resumable checkpoints; 0 = only at the end."}),
                "run_name": ("STRING", {"default": "leapalign_run",
                                        "tooltip": "Folder under output/leapalign for checkpoints and metrics."}),
                "resume": ("BOOLEAN", {"default": False,
                                       "tooltip": "Continue from the latest checkpoint in the run folder."}),
            },
            "optional": {
                "memory_preset": (list(PRESETS), {"default": "auto", "tooltip": (
                    "Memory options (checkpointing, offloading) chosen to fit a card; auto = this GPU, "
                    "off = none. The predicted peak is printed before training starts.")}),
                "pair_sampling": (["released", "pseudocode"], {
                    "default": "released", "tooltip": "released: two distinct evaluation steps, j never the last "
                    "(the authors' code); pseudocode: k uniform, then j after it, final point included."}),
                "sigma_shift": (list(SHIFT_MODES), {
                    "default": "auto", "tooltip": "Training grid: auto = the Flux shift for width x height unless "
                    "the model already has a ModelSamplingFlux patch; resolution = always; model = as loaded."}),
            },
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, run_name):
        """The run folder's name is checked when the graph is validated, before any training."""
        if not isinstance(run_name, str):
            return True  # fed by a link: checked when the node runs
        try:
            cls._run_dir(run_name)
        except ValueError as exc:
            return str(exc)
        return True

    RETURN_TYPES = ("MODEL", LEAP_LORA, LEAP_METRICS)
    RETURN_NAMES = ("model", "lora", "metrics")
    OUTPUT_TOOLTIPS = ("The input model with the trained LoRA applied (sample from it right away).",
                       "The trained LoRA; connect it to LeapAlign Save LoRA.",
                       "Per-step reward/loss history; connect it to LeapAlign Plot Metrics.")
    FUNCTION = "run"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Post-trains a flow-matching model (Flux.1, SD3.5) with LeapAlign: reward gradients through two-step leaps at any generation "
                   "step, into a LoRA. Cancel stops at the next step.")

    def run(self, model, clip, vae, reward, prompts, method, alpha, hinge_lambda, tau, lora_rank, lora_alpha,
            lora_targets, learning_rate, weight_decay, grad_clip, ema_decay, steps, batch_size, grad_accumulation,
            seed, width, height, sampling_steps, scheduler, guidance, checkpoint_every, run_name, resume,
            memory_preset="auto", pair_sampling="released", sigma_shift="auto", prompt=None, unique_id=None):
        settings = {key: value for key, value in locals().items()
                    if key not in ("self", "model", "clip", "vae", "reward", "prompts", "prompt", "unique_id")}
        try:
            family = family_of(model)
            targets = family.targets(lora_targets)
            prompts = require_prompts(list(prompts or []), source="the prompts input")
            family.check_size(width, height)
            method_config = MethodConfig(name=method, alpha=alpha, tau=tau, pair_sampling=pair_sampling,
                                         hinge_lambda=None if hinge_lambda == -1.0 else hinge_lambda)
            model = training_model(model, sigma_shift, width, height, family.resolution_schedule, sampling_steps)
            optim = OptimConfig(lr=learning_rate, weight_decay=weight_decay, grad_clip=grad_clip or None,
                                ema_decay=ema_decay or None)
            run_dir = self._run_dir(run_name)
            config = TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accumulation, seed=seed,
                                 optim=optim, checkpoint_every=checkpoint_every, checkpoint_dir=str(run_dir),
                                 should_stop=_stop_requested)
            dist = DistContext.current()
            lock = RunLock(run_dir).acquire() if dist.is_main else None
        except RunLockedError as exc:
            raise node_error(NODE_NAME, f"{exc}; wait for it to finish, or give this run another run_name") from None
        except (PromptListError, ValueError) as exc:
            raise node_error(NODE_NAME, str(exc)) from None
        try:
            try:
                checkpoint = _prepare_run_folder(run_dir, resume, dist.is_main)
            except ValueError as exc:
                raise node_error(NODE_NAME, str(exc)) from None
            return self._train(model, clip, vae, reward, prompts, settings, method_config, config, dist, checkpoint,
                               base_model_name(prompt, unique_id), unique_id)
        finally:
            if lock is not None:
                lock.release()

    def _train(self, model, clip, vae, reward, prompts, settings, method_config, config, dist, checkpoint,
               base_model, unique_id=None):
        """Build the LoRA and the training callables, run the core loop, package the result."""
        width, height, seed = settings["width"], settings["height"], settings["seed"]
        run_dir, steps = Path(config.checkpoint_dir), config.steps
        family = family_of(model)
        latent_shape = sample_latent_shape(model, width, height, family.latent_downscale)
        sigmas = model_sigmas(model, settings["scheduler"], settings["sampling_steps"])
        encoder = PromptEncoder(clip, settings["guidance"], family)
        lora_config = LoRAConfig(rank=settings["lora_rank"], alpha=settings["lora_alpha"],
                                 targets=family.targets(settings["lora_targets"]), init_seed=seed)
        with autograd_enabled(), threads_for_model(model):
            try:
                lora = LoRAAdapter(model.model.diffusion_model, lora_config).to(model.load_device)
            except LoRAError as exc:
                raise node_error(NODE_NAME, str(exc)) from None
            try:
                memory = MemorySetup(settings["memory_preset"], model, vae, reward, clip, lora, width, height,
                                     settings["batch_size"])
            except ValueError as exc:
                raise node_error(NODE_NAME, str(exc)) from None
            memory.report()
            if (problem := check_fits(memory.plan, model.load_device)) is not None:
                raise node_error(NODE_NAME, problem)
            trainer = memory.training_clone(model, lora, lambda m, adapter: training_clone(m, adapter, family))
            view = LiveView(steps, unique_id)
            decoder = view.watch(make_decoder(vae, model))
            _check_reward_fits(decoder, reward, latent_shape, model.load_device)

            def prepare(inner):
                prepare_for_autograd(inner)
                inner.diffusion_model.requires_grad_(False)

            def loss_fn(batch):
                positive = encoder(batch.prompts)
                noise = batch.noise(latent_shape)

                def body(velocity, x_init, grid, inner):
                    result = compute_loss(method_config, velocity, decoder, reward, x_init, grid, batch.prompts,
                                          batch.generator())
                    # Backward here, while ComfyUI's guider still holds the model: gradient
                    # checkpointing recomputes velocities during backward.
                    if result.loss.requires_grad and bool(torch.isfinite(result.loss.detach())):
                        (result.loss * batch.grad_scale).backward()
                    result.loss, result.backward_done = result.loss.detach(), True
                    return result, x_init

                result, _ = sample_with(trainer, positive, noise, sigmas, body, seed=batch.seed, prepare_model=prepare)
                # which global samples this rank trained on (per-sample lists are gathered in rank order)
                result.metrics["sample_index"] = [int(i) for i in batch.indices]
                result.metrics["sample_rank"] = [dist.rank] * len(batch.prompts)
                result.metrics["prompts"] = list(batch.prompts)
                return result

            log_path = run_dir / METRICS_FILE if dist.is_main else None
            if log_path is not None:
                run_dir.mkdir(parents=True, exist_ok=True)
            try:
                with memory.applied(vae, reward, clip, encoder, prompts):
                    result = train(lora.named_trainable(), loss_fn, prompts, config,
                                   callback=_StepReporter(steps, log_path, view), dist=dist, resume=checkpoint,
                                   fixed_settings=_fixed_settings(settings, prompts))
            except LeapAlignNodeError:
                raise
            except (ValueError, CheckpointError, LoRAError) as exc:
                raise node_error(NODE_NAME, str(exc)) from None
        return self._package(model, family, lora, lora_config, result, settings, prompts, base_model, run_dir)

    @staticmethod
    def _package(model, family, lora, lora_config, result, settings, prompts, base_model, run_dir):
        """The node's outputs, or ComfyUI's interrupt when the run was stopped (its checkpoint is written)."""
        if result.stopped:  # stopped at a step boundary, checkpoint written: report it as ComfyUI's interrupt
            import comfy.model_management

            raise comfy.model_management.InterruptProcessingException()

        history = result.history
        method = settings["method"]
        metadata = LoRAMetadata(
            base_model=base_model, method=method, steps=result.step,
            parameters={**_metadata_parameters(settings, prompts, result.changes), "mu": schedule_mu(model)},
            reward_before=history[0].get("reward") if history else None,
            reward_after=history[-1].get("reward") if history else None,
            base_model_version=family.name,
        )
        state_dict = family.export_lora(lora, result.ema, model)
        trained = TrainedLoRA(state_dict=state_dict, config=lora_config, metadata=metadata)
        metrics = {"history": history, "run_dir": str(run_dir), "method": method}
        return (apply_lora(model, state_dict), trained, metrics)

    @staticmethod
    def _run_dir(run_name: str) -> Path:
        import folder_paths

        base = Path(folder_paths.get_output_directory()) / RUNS_FOLDER
        return resolve_inside(base, run_name.strip(), "run_name")


NODE_CLASS_MAPPINGS = {"LeapAlignTrainLoRA": LeapAlignTrainLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"LeapAlignTrainLoRA": "LeapAlign Train LoRA"}
