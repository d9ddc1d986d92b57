"""One training run of the training nodes: settings in, LoRA + metrics out.

The node is glue: it binds the graph's MODEL/CLIP/VAE/reward into the core's callables
(``nodes.adapters``), attaches a hook-based LoRA (``leapalign.lora``) to a training clone of the
model, and runs the core loop (``leapalign.train.train``). Every optimizer step updates a ComfyUI
progress bar and checks for Cancel, so an interrupted run stops at the next step; nothing is written
to ``models/loras`` here (that is the Save LoRA node's job), so a cancelled run leaves no LoRA file.
Under ``torch.distributed`` (the headless CLI initialises it) the loop is data-parallel.

Everything a run is told comes in as one :class:`Recipe` of config objects (``leapalign.config``
method and optimizer, :class:`~nodes.method_nodes.LoRASettings`, :class:`RunSettings`); the resume
check and the LoRA's metadata are built from those objects, never from a list of widget values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..leapalign.checkpoint import RUNS_FOLDER, CheckpointError, checkpoint_step, newest_readable
from ..leapalign.config import MethodConfig, OptimConfig, TrainConfig
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
from .common import LeapAlignNodeError, node_error
from .cpu_threads import threads_for_model
from .families import family_of
from .flux_shift import schedule_mu, training_model
from .live_view import LiveView
from .lora_nodes import TrainedLoRA
from .memory_options import MemorySetup, check_fits
from .method_nodes import LoRASettings
from .paths import resolve_inside
from .widgets import hinge_widget

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




@dataclass
class RunSettings:
    """The training node's own widgets: how long, on what sizes, where the run folder is."""

    steps: int = 300
    batch_size: int = 1
    grad_accumulation: int = 1
    seed: int = 0
    width: int = 720
    height: int = 720
    sampling_steps: int = 25
    scheduler: str = "simple"
    guidance: float = 3.5
    checkpoint_every: int = 50
    run_name: str = "leapalign_run"
    resume: bool = False
    memory_preset: str = "auto"
    sigma_shift: str = "auto"


@dataclass
class Recipe:
    """Everything one training run is told (the method, optimizer and LoRA blocks plus the node's widgets)."""

    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoRASettings = field(default_factory=LoRASettings)
    run: RunSettings = field(default_factory=RunSettings)


_FIXED_RUN = ("seed", "batch_size", "grad_accumulation", "width", "height", "sampling_steps", "scheduler", "guidance",
              "sigma_shift")
_METHOD_SKIP = ("name", "checkpoint_context", "rollout_dtype", "keep_trajectory", "k", "j")


def method_parameters(method: MethodConfig) -> dict:
    """The method config's plain settings (hinge_lambda as the widget shows it: -1 = the reward's default)."""
    out = {f.name: getattr(method, f.name) for f in dataclasses.fields(method) if f.name not in _METHOD_SKIP}
    out["hinge_lambda"] = hinge_widget(method.hinge_lambda)
    return out


def fixed_settings(recipe: Recipe, prompts: list[str]) -> dict:
    """What a resumed run must keep (a change makes it another run); keys as earlier checkpoints wrote them.

    ``steps`` and the optimizer settings may change on resume; ``memory_preset`` too.
    """
    digest = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()[:16]
    run = dataclasses.asdict(recipe.run)
    return {"method": recipe.method.name, **method_parameters(recipe.method), "lora_rank": recipe.lora.rank,
            "lora_alpha": recipe.lora.alpha, "lora_targets": recipe.lora.targets,
            **{key: run[key] for key in _FIXED_RUN}, "prompts_sha256": digest}


def metadata_parameters(recipe: Recipe, prompts: list[str], changes: list[dict]) -> dict:
    """The LoRA file's ``leapalign_parameters``: the recipe's config objects, flattened."""
    optim = recipe.optim
    run = {k: v for k, v in dataclasses.asdict(recipe.run).items() if k not in ("steps", "run_name", "resume",
                                                                              "checkpoint_every")}
    return {**method_parameters(recipe.method), "rank": recipe.lora.rank, "lora_alpha": recipe.lora.alpha,
            "targets": recipe.lora.targets, "lr": optim.lr, "weight_decay": optim.weight_decay,
            "grad_clip": optim.grad_clip or 0.0, "ema_decay": optim.ema_decay or 0.0, **run,
            "prompt_count": len(prompts), "setting_changes": changes}


def run_dir_for(run_name: str) -> Path:
    """``<output>/leapalign/<run_name>``; ValueError when the name leaves that folder."""
    import folder_paths

    base = Path(folder_paths.get_output_directory()) / RUNS_FOLDER
    return resolve_inside(base, run_name.strip(), "run_name")


def run_training(recipe: Recipe, model, clip, vae, reward, prompts, prompt=None, unique_id=None):
    """Check the recipe against the model, take the run folder's lock, train; ``(model, lora, metrics)``."""
    run = recipe.run
    try:
        family = family_of(model)
        family.targets(recipe.lora.targets)
        prompts = require_prompts(list(prompts or []), source="the prompts input")
        family.check_size(run.width, run.height)
        model = training_model(model, run.sigma_shift, run.width, run.height, family.resolution_schedule,
                               run.sampling_steps)
        run_dir = run_dir_for(run.run_name)
        config = TrainConfig(steps=run.steps, batch_size=run.batch_size, grad_accum=run.grad_accumulation,
                             seed=run.seed, optim=recipe.optim, checkpoint_every=run.checkpoint_every,
                             checkpoint_dir=str(run_dir), should_stop=_stop_requested)
        dist = DistContext.current()
        lock = RunLock(run_dir).acquire() if dist.is_main else None
    except RunLockedError as exc:
        raise node_error(NODE_NAME, f"{exc}; wait for it to finish, or give this run another run_name") from None
    except (PromptListError, ValueError) as exc:
        raise node_error(NODE_NAME, str(exc)) from None
    try:
        try:
            checkpoint = _prepare_run_folder(run_dir, run.resume, dist.is_main)
        except ValueError as exc:
            raise node_error(NODE_NAME, str(exc)) from None
        job = _Job(recipe, model, clip, vae, reward, prompts, config, dist, unique_id)
        return job.run(checkpoint, base_model_name(prompt, unique_id))
    finally:
        if lock is not None:
            lock.release()


class _Job:
    """One run's model, callables and config, split into steps short enough to read."""

    def __init__(self, recipe: Recipe, model, clip, vae, reward, prompts, config: TrainConfig, dist, unique_id):
        self.recipe, self.model, self.clip, self.vae, self.reward = recipe, model, clip, vae, reward
        self.prompts, self.config, self.dist, self.unique_id = prompts, config, dist, unique_id
        self.family = family_of(model)
        self.run_dir = Path(config.checkpoint_dir)
        run = recipe.run
        self.latent_shape = sample_latent_shape(model, run.width, run.height, self.family.latent_downscale)
        self.lora_config = LoRAConfig(rank=recipe.lora.rank, alpha=recipe.lora.alpha,
                                      targets=self.family.targets(recipe.lora.targets), init_seed=run.seed)

    def run(self, checkpoint, base_model: str):
        with autograd_enabled(), threads_for_model(self.model):
            lora, memory = self._attach_lora()
            trainer = memory.training_clone(self.model, lora,
                                            lambda m, adapter: training_clone(m, adapter, self.family))
            view = LiveView(self.config.steps, self.unique_id)
            decoder = view.watch(make_decoder(self.vae, self.model))
            _check_reward_fits(decoder, self.reward, self.latent_shape, self.model.load_device)
            loss_fn, encoder = self._loss_fn(trainer, decoder)
            log_path = self.run_dir / METRICS_FILE if self.dist.is_main else None
            if log_path is not None:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                with memory.applied(self.vae, self.reward, self.clip, encoder, self.prompts):
                    result = train(lora.named_trainable(), loss_fn, self.prompts, self.config,
                                   callback=_StepReporter(self.config.steps, log_path, view), dist=self.dist,
                                   resume=checkpoint, fixed_settings=fixed_settings(self.recipe, self.prompts))
            except LeapAlignNodeError:
                raise
            except (ValueError, CheckpointError, LoRAError) as exc:
                raise node_error(NODE_NAME, str(exc)) from None
        return self._package(lora, result, base_model)

    def _attach_lora(self):
        """The LoRA on the diffusion model, and the memory options chosen for this card (checked to fit)."""
        run = self.recipe.run
        try:
            lora = LoRAAdapter(self.model.model.diffusion_model, self.lora_config).to(self.model.load_device)
            memory = MemorySetup(run.memory_preset, self.model, self.vae, self.reward, self.clip, lora, run.width,
                                 run.height, run.batch_size)
        except (LoRAError, ValueError) as exc:
            raise node_error(NODE_NAME, str(exc)) from None
        memory.report()
        if (problem := check_fits(memory.plan, self.model.load_device)) is not None:
            raise node_error(NODE_NAME, problem)
        return lora, memory

    def _loss_fn(self, trainer, decoder):
        """The core's loss function (and its prompt encoder): one micro-batch: encode, sample with ComfyUI's sampler, the method's loss, backward inside."""
        run, method, reward, dist = self.recipe.run, self.recipe.method, self.reward, self.dist
        sigmas = model_sigmas(self.model, run.scheduler, run.sampling_steps)
        encoder = PromptEncoder(self.clip, run.guidance, self.family)
        latent_shape = self.latent_shape

        def prepare(inner):
            prepare_for_autograd(inner)
            inner.diffusion_model.requires_grad_(False)

        def loss_fn(batch):
            positive = encoder(batch.prompts)

            def body(velocity, x_init, grid, inner):
                result = compute_loss(method, velocity, decoder, reward, x_init, grid, batch.prompts, batch.generator())
                # Backward here, while ComfyUI's guider still holds the model: gradient
                # checkpointing recomputes velocities during backward.
                if result.loss.requires_grad and bool(torch.isfinite(result.loss.detach())):
                    (result.loss * batch.grad_scale).backward()
                result.loss, result.backward_done = result.loss.detach(), True
                return result, x_init

            result, _ = sample_with(trainer, positive, batch.noise(latent_shape), sigmas, body, seed=batch.seed,
                                    prepare_model=prepare)
            # which global samples this rank trained on (per-sample lists are gathered in rank order)
            result.metrics["sample_index"] = [int(i) for i in batch.indices]
            result.metrics["sample_rank"] = [dist.rank] * len(batch.prompts)
            result.metrics["prompts"] = list(batch.prompts)
            return result

        return loss_fn, encoder

    def _package(self, lora, result, base_model: str):
        """The node's outputs, or ComfyUI's interrupt when the run was stopped (its checkpoint is written)."""
        if result.stopped:  # stopped at a step boundary, checkpoint written: report it as ComfyUI's interrupt
            import comfy.model_management

            raise comfy.model_management.InterruptProcessingException()
        history, method = result.history, self.recipe.method.name
        metadata = LoRAMetadata(
            base_model=base_model, method=method, steps=result.step,
            parameters={**metadata_parameters(self.recipe, self.prompts, result.changes),
                        "mu": schedule_mu(self.model)},
            reward_before=history[0].get("reward") if history else None,
            reward_after=history[-1].get("reward") if history else None,
            base_model_version=self.family.name,
        )
        state_dict = self.family.export_lora(lora, result.ema, self.model)
        trained = TrainedLoRA(state_dict=state_dict, config=self.lora_config, metadata=metadata)
        metrics = {"history": history, "run_dir": str(self.run_dir), "method": method}
        return apply_lora(self.model, state_dict), trained, metrics

