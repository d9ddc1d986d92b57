"""The training nodes: ``LeapAlign Train LoRA`` (method, optimizer and LoRA as blocks) and its all-in-one
predecessor, kept so workflows saved before the blocks existed load and run unchanged.

Both build one :class:`~nodes.training_run.Recipe` from their inputs and hand it to
:func:`~nodes.training_run.run_training`; nothing else differs between them.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..leapalign.config import METHOD_NAMES, MethodConfig, OptimConfig
from . import sockets, widgets
from .common import CATEGORY, node_error
from .families import preset_names
from .flux_shift import SHIFT_MODES
from .memory_options import PRESETS
from .method_nodes import LoRASettings, optimizer_config
from .training_run import NODE_NAME, Recipe, RunSettings, run_dir_for, run_training

_RUN = RunSettings()
_LORA = LoRASettings()


def _world_inputs() -> list:
    return [widgets.model(), widgets.clip(), widgets.vae(),
            sockets.Reward.Input("reward", tooltip="The differentiable reward to raise (LeapAlign Reward Loader)."),
            sockets.Prompts.Input("prompts", tooltip="The prompts training draws from (LeapAlign Prompt List).")]


def _run_inputs() -> list:
    """The widgets of a run (the same names and order as the all-in-one node, so --set paths match)."""
    return [
        io.Int.Input("steps", default=_RUN.steps, min=1, max=1000000, tooltip="Optimizer steps to train."),
        io.Int.Input("batch_size", default=_RUN.batch_size, min=1, max=4096,
                     tooltip="Prompts per micro-batch over all ranks."),
        io.Int.Input("grad_accumulation", default=_RUN.grad_accumulation, min=1, max=1024,
                     tooltip="Micro-batches per optimizer step."),
        widgets.seed(),
        widgets.size("width", _RUN.width), widgets.size("height", _RUN.height),
        widgets.sampling_steps(_RUN.sampling_steps), widgets.scheduler(_RUN.scheduler), widgets.guidance(_RUN.guidance),
        io.Int.Input("checkpoint_every", default=_RUN.checkpoint_every, min=0, max=1000000,
                     tooltip="Steps between resumable checkpoints; 0 = only at the end."),
        io.String.Input("run_name", default=_RUN.run_name,
                        tooltip="Folder under output/leapalign for checkpoints and metrics."),
        io.Boolean.Input("resume", default=_RUN.resume, tooltip="Continue from the latest checkpoint in the run folder."),
    ]


def _memory_input() -> io.Combo.Input:
    return io.Combo.Input("memory_preset", options=list(PRESETS), default="auto", optional=True, tooltip=(
        "Memory options (checkpointing, offloading) chosen to fit a card; auto = this GPU, off = none. "
        "The predicted peak is printed before training starts."))


def _shift_input() -> io.Combo.Input:
    return io.Combo.Input("sigma_shift", options=list(SHIFT_MODES), default="auto", optional=True, tooltip=(
        "Training grid: auto = the Flux shift for width x height unless the model already has a "
        "ModelSamplingFlux patch; resolution = always; model = as loaded."))


_OUTPUTS = [
    io.Model.Output("trained_model", display_name="model", tooltip="The input model with the trained LoRA applied (sample from it right away)."),
    sockets.LoRA.Output("lora", display_name="lora", tooltip="The trained LoRA; connect it to LeapAlign Save LoRA."),
    sockets.Metrics.Output("metrics", display_name="metrics", tooltip="Per-step reward/loss history; connect it to LeapAlign Plot Metrics."),
]
_HIDDEN = [io.Hidden.prompt, io.Hidden.unique_id]


def _run_settings(kwargs: dict) -> RunSettings:
    names = RunSettings.__dataclass_fields__
    return RunSettings(**{key: value for key, value in kwargs.items() if key in names})


def _validate_run_name(run_name) -> bool | str:
    """The run folder's name is checked when the graph is validated, before any training."""
    if not isinstance(run_name, str):
        return True  # fed by a link: checked when the node runs
    try:
        run_dir_for(run_name)
    except ValueError as exc:
        return str(exc)
    return True


def _hidden(cls) -> tuple:
    hidden = getattr(cls, "hidden", None)  # None when execute is called directly (tests)
    return getattr(hidden, "prompt", None), getattr(hidden, "unique_id", None)


class LeapAlignTrain(io.ComfyNode):
    """LeapAlign LoRA training; the method, optimizer and LoRA shape come from their blocks."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LeapAlignTrain", display_name=NODE_NAME, category=CATEGORY,
            description="Post-trains a flow-matching model (Flux.1, SD3.5, ...) with a reward: LeapAlign or a "
                        "baseline (the method block), into a LoRA. Cancel stops at the next step.",
            inputs=[*_world_inputs(),
                    sockets.Method.Input("method", optional=True, tooltip=(
                        "A method block (LeapAlign Method, or a baseline); unconnected: LeapAlign with the "
                        "released code's defaults.")),
                    sockets.Optimizer.Input("optimizer", optional=True, tooltip=(
                        "LeapAlign Optimizer; unconnected: AdamW lr 1e-5, weight decay 1e-4, clip 1, EMA 0.995.")),
                    sockets.LoRASettings.Input("lora_settings", optional=True, tooltip=(
                        "LeapAlign LoRA Settings; unconnected: rank 16, alpha 16, attention+mlp.")),
                    *_run_inputs(), _memory_input(), _shift_input()],
            outputs=_OUTPUTS, hidden=_HIDDEN)

    @classmethod
    def validate_inputs(cls, run_name, scheduler, memory_preset=None, sigma_shift=None) -> bool | str:
        problem = _validate_run_name(run_name)
        return problem if problem is not True else widgets.combo_problem(
            cls, scheduler=scheduler, memory_preset=memory_preset, sigma_shift=sigma_shift)

    @classmethod
    def execute(cls, model, clip, vae, reward, prompts, method: MethodConfig | None = None,
                optimizer: OptimConfig | None = None, lora_settings: LoRASettings | None = None,
                **run) -> io.NodeOutput:
        recipe = Recipe(method=method or MethodConfig(), optim=optimizer or OptimConfig(),
                        lora=lora_settings or LoRASettings(), run=_run_settings(run))
        return io.NodeOutput(*run_training(recipe, model, clip, vae, reward, prompts, *_hidden(cls)))


class LeapAlignTrainLoRA(io.ComfyNode):
    """The all-in-one training node of workflows saved before the blocks (same widgets, same order)."""

    DISPLAY_NAME = "LeapAlign Train LoRA (all settings, legacy)"

    @classmethod
    def define_schema(cls):
        legacy = [
            io.Combo.Input("method", options=list(METHOD_NAMES), default="leapalign",
                           tooltip="leapalign, or a baseline for comparison (with the released code's settings)."),
            widgets.alpha(), widgets.hinge_lambda(), widgets.tau(),
            widgets.lora_rank(_LORA.rank), widgets.lora_alpha(_LORA.alpha), widgets.lora_targets(preset_names()),
            widgets.learning_rate(), widgets.weight_decay(), widgets.grad_clip(), widgets.ema_decay(),
        ]
        return io.Schema(
            node_id="LeapAlignTrainLoRA", display_name=cls.DISPLAY_NAME, category=CATEGORY, is_deprecated=True,
            description="Workflows saved before the method/optimizer/LoRA blocks use this node; new graphs use "
                        "LeapAlign Train LoRA with the blocks. Trains exactly the same way.",
            inputs=[*_world_inputs(), *legacy, *_run_inputs(), _memory_input(), widgets.pair_sampling(),
                    _shift_input()],
            outputs=_OUTPUTS, hidden=_HIDDEN)

    @classmethod
    def validate_inputs(cls, run_name, method, lora_targets, scheduler, memory_preset=None, pair_sampling=None,
                        sigma_shift=None) -> bool | str:
        problem = _validate_run_name(run_name)
        return problem if problem is not True else widgets.combo_problem(
            cls, method=method, lora_targets=lora_targets, scheduler=scheduler, memory_preset=memory_preset,
            pair_sampling=pair_sampling, sigma_shift=sigma_shift)

    @classmethod
    def execute(cls, model, clip, vae, reward, prompts, method, alpha, hinge_lambda, tau, lora_rank, lora_alpha,
                lora_targets, learning_rate, weight_decay, grad_clip, ema_decay, steps, batch_size, grad_accumulation,
                seed, width, height, sampling_steps, scheduler, guidance, checkpoint_every, run_name, resume,
                memory_preset="auto", pair_sampling="released", sigma_shift="auto") -> io.NodeOutput:
        try:
            method_config = MethodConfig(name=method, alpha=alpha, tau=tau, pair_sampling=pair_sampling,
                                         hinge_lambda=widgets.hinge_value(hinge_lambda))
        except ValueError as exc:
            raise node_error(NODE_NAME, str(exc)) from None
        run = RunSettings(steps=steps, batch_size=batch_size, grad_accumulation=grad_accumulation, seed=seed,
                          width=width, height=height, sampling_steps=sampling_steps, scheduler=scheduler,
                          guidance=guidance, checkpoint_every=checkpoint_every, run_name=run_name, resume=resume,
                          memory_preset=memory_preset, sigma_shift=sigma_shift)
        recipe = Recipe(method=method_config,
                        optim=optimizer_config(NODE_NAME, learning_rate, weight_decay, grad_clip, ema_decay),
                        lora=LoRASettings(rank=int(lora_rank), alpha=float(lora_alpha), targets=lora_targets), run=run)
        return io.NodeOutput(*run_training(recipe, model, clip, vae, reward, prompts, *_hidden(cls)))


NODES = [LeapAlignTrain, LeapAlignTrainLoRA]
