"""The training recipe as graph blocks: one node per method, one for the optimizer, one for the LoRA.

Each block outputs a config object of ``leapalign.config`` (or :class:`LoRASettings`) on its own
socket type; the training node takes them as optional inputs and uses the released code's defaults
for any that is not connected. Switching method in a graph is swapping the method node; the Rollout
Capture -> Leap Loss inspection blocks take the same LeapAlign method block.
"""

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

from ..leapalign.config import MethodConfig, OptimConfig
from . import sockets, widgets
from .common import CATEGORY, node_error

METHOD_CATEGORY = f"{CATEGORY}/method"
_DEFAULT = MethodConfig()


@dataclass(frozen=True)
class LoRASettings:
    """The LoRA's shape: rank, alpha and the target preset (a family maps the preset to layer names)."""

    rank: int = 16
    alpha: float = 16.0
    targets: str = "attention+mlp"


def _method(display_name: str, **fields) -> MethodConfig:
    try:
        return MethodConfig(**fields)
    except ValueError as exc:
        raise node_error(display_name, str(exc)) from None


def _method_schema(node_id: str, display_name: str, description: str, inputs: list) -> io.Schema:
    return io.Schema(node_id=node_id, display_name=display_name, category=METHOD_CATEGORY, description=description,
                     inputs=[*inputs, widgets.hinge_lambda()],
                     outputs=[sockets.Method.Output("method", display_name="method", tooltip="Connect to the training node's method input.")])


class LeapAlignMethod(io.ComfyNode):
    DISPLAY_NAME = "LeapAlign Method"

    @classmethod
    def define_schema(cls):
        return _method_schema("LeapAlignMethod", cls.DISPLAY_NAME,
                              "LeapAlign: reward gradients through a two-step leap x_k -> x_j -> x_0 at any "
                              "generation step, weighted by trajectory similarity (the released code's defaults).",
                              [widgets.alpha(), widgets.tau(), widgets.pair_sampling(), widgets.weighting()])

    @classmethod
    def validate_inputs(cls, pair_sampling=None, weighting=None) -> bool | str:
        return widgets.combo_problem(cls, pair_sampling=pair_sampling, weighting=weighting)

    @classmethod
    def execute(cls, alpha, tau, hinge_lambda, pair_sampling=_DEFAULT.pair_sampling,
                weighting=_DEFAULT.weighting) -> io.NodeOutput:
        return io.NodeOutput(_method(cls.DISPLAY_NAME, name="leapalign", alpha=alpha, tau=tau, pair_sampling=pair_sampling,
                                     weighting=weighting, hinge_lambda=widgets.hinge_value(hinge_lambda)))


class LeapAlignMethodReFL(io.ComfyNode):
    DISPLAY_NAME = "LeapAlign Method: ReFL"

    @classmethod
    def define_schema(cls):
        return _method_schema("LeapAlignMethodReFL", cls.DISPLAY_NAME,
                              "ReFL baseline: no-grad sampling to a random late step, then one step with gradient "
                              "and the reward on its x_0 prediction.",
                              [io.Float.Input("late_fraction", default=_DEFAULT.refl_late_fraction, min=0.01, max=1.0,
                                              step=0.01, tooltip="The start point is drawn from this last fraction of "
                                              "the steps (released comparison code: 11 of 25 = 0.44).")])

    @classmethod
    def execute(cls, late_fraction, hinge_lambda) -> io.NodeOutput:
        return io.NodeOutput(_method(cls.DISPLAY_NAME, name="refl", refl_late_fraction=late_fraction,
                                     hinge_lambda=widgets.hinge_value(hinge_lambda)))


class LeapAlignMethodDraftK(io.ComfyNode):
    DISPLAY_NAME = "LeapAlign Method: DRaFT-K"

    @classmethod
    def define_schema(cls):
        return _method_schema("LeapAlignMethodDraftK", cls.DISPLAY_NAME,
                              "DRaFT-K baseline: full sampling, gradient through the last K steps only.",
                              [io.Int.Input("k", default=_DEFAULT.draft_k, min=1, max=1000,
                                            tooltip="How many final steps carry gradient.")])

    @classmethod
    def execute(cls, k, hinge_lambda) -> io.NodeOutput:
        return io.NodeOutput(_method(cls.DISPLAY_NAME, name="draft_k", draft_k=k,
                                     hinge_lambda=widgets.hinge_value(hinge_lambda)))


class LeapAlignMethodDraftLV(io.ComfyNode):
    DISPLAY_NAME = "LeapAlign Method: DRaFT-LV"

    @classmethod
    def define_schema(cls):
        return _method_schema("LeapAlignMethodDraftLV", cls.DISPLAY_NAME,
                              "DRaFT-LV baseline: the last step with gradient, averaged over re-noised copies of x_0.",
                              [io.Int.Input("copies", default=_DEFAULT.draft_lv_copies, min=1, max=64,
                                            tooltip="Re-noised copies per sample."),
                               io.Float.Input("sigma", default=0.0, min=0.0, max=1.0, step=0.01,
                                              tooltip="Noise level of the copies; 0 = the last non-zero grid sigma."),
                               io.Boolean.Input("include_last", default=_DEFAULT.draft_lv_include_last,
                                                tooltip="Also keep the K = 1 term on the real chain.")])

    @classmethod
    def execute(cls, copies, sigma, include_last, hinge_lambda) -> io.NodeOutput:
        return io.NodeOutput(_method(cls.DISPLAY_NAME, name="draft_lv", draft_lv_copies=copies,
                                     draft_lv_sigma=sigma or None, draft_lv_include_last=include_last,
                                     hinge_lambda=widgets.hinge_value(hinge_lambda)))


class LeapAlignMethodDRTune(io.ComfyNode):
    DISPLAY_NAME = "LeapAlign Method: DRTune"

    @classmethod
    def define_schema(cls):
        return _method_schema("LeapAlignMethodDRTune", cls.DISPLAY_NAME,
                              "DRTune baseline: gradient through a few evenly spaced steps with stopped input "
                              "gradients, early-stopped chain.",
                              [io.Int.Input("trained_steps", default=_DEFAULT.drtune_steps, min=1, max=1000,
                                            tooltip="Evenly spaced steps that carry gradient."),
                               io.Float.Input("early_stop", default=_DEFAULT.drtune_early_stop, min=0.0, max=1.0,
                                              step=0.05, tooltip="The chain stops at a random point in this last "
                                              "fraction and scores its x_0 prediction; 0 = score the real x_N.")])

    @classmethod
    def execute(cls, trained_steps, early_stop, hinge_lambda) -> io.NodeOutput:
        return io.NodeOutput(_method(cls.DISPLAY_NAME, name="drtune", drtune_steps=trained_steps,
                                     drtune_early_stop=early_stop, hinge_lambda=widgets.hinge_value(hinge_lambda)))


class LeapAlignMethodFullBackprop(io.ComfyNode):
    DISPLAY_NAME = "LeapAlign Method: full backprop"

    @classmethod
    def define_schema(cls):
        return _method_schema("LeapAlignMethodFullBackprop", cls.DISPLAY_NAME,
                              "Gradient through every sampling step (DRaFT-K with K = N; memory-hungry).", [])

    @classmethod
    def execute(cls, hinge_lambda) -> io.NodeOutput:
        return io.NodeOutput(_method(cls.DISPLAY_NAME, name="full_backprop",
                                     hinge_lambda=widgets.hinge_value(hinge_lambda)))


class LeapAlignOptimizer(io.ComfyNode):
    DISPLAY_NAME = "LeapAlign Optimizer"

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="LeapAlignOptimizer", display_name=cls.DISPLAY_NAME, category=CATEGORY,
                         description="AdamW settings for the training node (unconnected: the paper's values).",
                         inputs=[widgets.learning_rate(), widgets.weight_decay(), widgets.grad_clip(),
                                 widgets.ema_decay()],
                         outputs=[sockets.Optimizer.Output("optimizer", display_name="optimizer", tooltip="Connect to the training node.")])

    @classmethod
    def execute(cls, learning_rate, weight_decay, grad_clip, ema_decay) -> io.NodeOutput:
        return io.NodeOutput(optimizer_config(cls.DISPLAY_NAME, learning_rate, weight_decay, grad_clip, ema_decay))


def optimizer_config(display_name: str, learning_rate, weight_decay, grad_clip, ema_decay) -> OptimConfig:
    """Widget values -> OptimConfig (0 switches clipping / the EMA off)."""
    try:
        return OptimConfig(lr=learning_rate, weight_decay=weight_decay, grad_clip=grad_clip or None,
                           ema_decay=ema_decay or None)
    except ValueError as exc:
        raise node_error(display_name, str(exc)) from None


class LeapAlignLoRASettings(io.ComfyNode):
    DISPLAY_NAME = "LeapAlign LoRA Settings"

    @classmethod
    def define_schema(cls):
        from .families import preset_names

        return io.Schema(node_id="LeapAlignLoRASettings", display_name=cls.DISPLAY_NAME, category=CATEGORY,
                         description="Rank, alpha and target layers of the trained LoRA (unconnected: rank 16, "
                                     "alpha 16, attention+mlp).",
                         inputs=[widgets.lora_rank(), widgets.lora_alpha(), widgets.lora_targets(preset_names())],
                         outputs=[sockets.LoRASettings.Output("lora_settings", display_name="lora_settings", tooltip="Connect to the training node.")])

    @classmethod
    def validate_inputs(cls, lora_targets) -> bool | str:
        return widgets.combo_problem(cls, lora_targets=lora_targets)

    @classmethod
    def execute(cls, lora_rank, lora_alpha, lora_targets) -> io.NodeOutput:
        return io.NodeOutput(LoRASettings(rank=int(lora_rank), alpha=float(lora_alpha), targets=lora_targets))


NODES = [LeapAlignMethod, LeapAlignMethodReFL, LeapAlignMethodDraftK, LeapAlignMethodDraftLV, LeapAlignMethodDRTune,
         LeapAlignMethodFullBackprop, LeapAlignOptimizer, LeapAlignLoRASettings]
