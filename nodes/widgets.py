"""Widget specs more than one node shows, declared once (ComfyUI V3 inputs with their tooltips).

Each function returns a fresh ``io.*.Input``; a node that needs another default or name passes it.
Defaults come from ``leapalign.config`` (the released code's values), so a node and the core never
disagree about them. ``hinge_lambda`` carries the one rule that "-1 means the reward's own default";
:func:`hinge_value` turns the widget value into what ``MethodConfig`` takes.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..leapalign.config import MethodConfig, OptimConfig
from ..leapalign.leap import WEIGHTINGS
from ..leapalign.sigmas import PAIR_SAMPLING

_METHOD = MethodConfig()
_OPTIM = OptimConfig()
SEED_MAX = 0xFFFFFFFFFFFFFFFF
REWARD_DEFAULT = -1.0
"""``hinge_lambda`` widget value that stands for the reward's ``default_lambda``."""


def hinge_value(widget: float) -> float | None:
    """The widget's value as ``MethodConfig.hinge_lambda`` (None = the reward's default)."""
    return None if float(widget) == REWARD_DEFAULT else float(widget)


def hinge_widget(value: float | None) -> float:
    """``MethodConfig.hinge_lambda`` back as the widget shows it."""
    return REWARD_DEFAULT if value is None else float(value)


def seed(id: str = "seed", default: int = 0, tooltip: str = "Random seed (noise, prompt order, pair draws).",
         control: bool = True) -> io.Int.Input:
    return io.Int.Input(id, default=default, min=0, max=SEED_MAX, control_after_generate=control or None,
                        tooltip=tooltip)


def alpha(default: float = _METHOD.alpha) -> io.Float.Input:
    return io.Float.Input("alpha", default=default, min=0.0, max=1.0, step=0.05,
                          tooltip="Gradient discount of the nested path through the leap (0 = none, 1 = full); "
                                  "the released code uses 0.3.")


def tau(default: float = _METHOD.tau) -> io.Float.Input:
    return io.Float.Input("tau", default=default, min=1e-4, max=10.0, step=0.01,
                          tooltip="Floor of the trajectory distances d_j, d_0 in the similarity weight.")


def hinge_lambda() -> io.Float.Input:
    return io.Float.Input("hinge_lambda", default=REWARD_DEFAULT, min=-1000.0, max=1000.0, step=0.01,
                          tooltip="Hinge threshold on the reward's scale: the loss is max(0, lambda - reward); "
                                  "-1 = the reward's default (HPSv2.1 0.55, PickScore 0.4, ...).")


def pair_sampling(default: str = _METHOD.pair_sampling) -> io.Combo.Input:
    return io.Combo.Input("pair_sampling", options=list(PAIR_SAMPLING), default=default, optional=True,
                          tooltip="released: two distinct evaluation steps, j never the last (the authors' code); "
                                  "pseudocode: k uniform, then j after it, final point included.")


def weighting(default: str = _METHOD.weighting) -> io.Combo.Input:
    return io.Combo.Input("weighting", options=list(WEIGHTINGS), default=default, optional=True,
                          tooltip="Trajectory-similarity weight of the loss: both distances (the released code), "
                                  "one of them, or none (weight 1).")


def lora_rank(default: int = 16) -> io.Int.Input:
    return io.Int.Input("lora_rank", default=default, min=1, max=1024,
                        tooltip="Rank of the LoRA matrices (file size and capacity grow with it).")


def lora_alpha(default: float = 16.0) -> io.Float.Input:
    return io.Float.Input("lora_alpha", default=default, min=0.01, max=4096.0, step=0.5,
                          tooltip="LoRA scale numerator: the update is scaled by lora_alpha / lora_rank.")


def lora_targets(options: list[str], default: str = "attention+mlp") -> io.Combo.Input:
    return io.Combo.Input("lora_targets", options=options, default=default,
                          tooltip="Which layers get a LoRA (the model family maps the preset to its layer names).")


def learning_rate(default: float = _OPTIM.lr) -> io.Float.Input:
    return io.Float.Input("learning_rate", default=default, min=1e-8, max=1.0, step=1e-6,
                          tooltip="AdamW learning rate (paper: 1e-5; 8e-6 with HPSv3).")


def weight_decay(default: float = _OPTIM.weight_decay) -> io.Float.Input:
    return io.Float.Input("weight_decay", default=default, min=0.0, max=1.0, step=1e-5,
                          tooltip="AdamW weight decay of the LoRA weights.")


def grad_clip(default: float = 1.0) -> io.Float.Input:
    return io.Float.Input("grad_clip", default=default, min=0.0, max=1000.0, step=0.1,
                          tooltip="Gradient-norm clip; 0 disables.")


def ema_decay(default: float = 0.995) -> io.Float.Input:
    return io.Float.Input("ema_decay", default=default, min=0.0, max=0.9999, step=0.001,
                          tooltip="EMA of the LoRA weights (the EMA is what is output); 0 disables.")


def scheduler(default: str = "simple") -> io.Combo.Input:
    import comfy.samplers

    return io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default=default,
                          tooltip="ComfyUI scheduler that spaces the sampling steps (as in KSampler).")


def sampling_steps(default: int = 25, id: str = "sampling_steps") -> io.Int.Input:
    return io.Int.Input(id, default=default, min=1, max=1000, tooltip="Euler steps of each sampled image.")


def guidance(default: float = 3.5) -> io.Float.Input:
    return io.Float.Input("guidance", default=default, min=0.0, max=100.0, step=0.1,
                          tooltip="Flux guidance embedding while sampling; ignored by models without one.")


def size(id: str, default: int, maximum: int = 4096) -> io.Int.Input:
    return io.Int.Input(id, default=default, min=16, max=maximum, step=16,
                        tooltip=f"Image {id} in pixels (a multiple of 16).")


def model(tooltip: str = "The model to train or sample (Flux.1, SD3.5, ... see the README's family table).",
          id: str = "model", optional: bool = False) -> io.Model.Input:
    return io.Model.Input(id, optional=optional, tooltip=tooltip)


def clip() -> io.Clip.Input:
    return io.Clip.Input("clip", tooltip="The text encoders that turn prompts into the model's conditioning.")


def vae() -> io.Vae.Input:
    return io.Vae.Input("vae", tooltip="Decodes latents into images for the reward.")


def eval_filename_prefix(default: str) -> io.String.Input:
    return io.String.Input("filename_prefix", default=default,
                           tooltip="Writes <prefix>_NNNNN_.png (labelled grid) and .json (scores) into the "
                                   "output folder.")


def combo_problem(node, **values) -> bool | str:
    """True, or which combo value is not one of its choices (``node``'s schema says the choices).

    ComfyUI 0.3.75 checks a V3 combo's value against its options only from 0.33 on (before, only V1
    list-typed inputs are checked), so a hand-edited API file with ``dtype: "fp8"`` would pass validation
    there and fail later, after training. A node's ``validate_inputs`` names its combo inputs and calls
    this; ComfyUI then leaves those inputs to it, on every version alike (see ``nodes/comfy_compat.py``).
    Linked values (not strings) are checked when the node runs.
    """
    schema = node.define_schema()  # GET_SCHEMA caches on the class, which ComfyUI locks while validating
    options = {i.id: i.options for i in schema.inputs if isinstance(i, io.Combo.Input) and i.options}
    for name, value in values.items():
        if value is None or isinstance(value, (list, tuple)) or name not in options:
            continue
        if value not in options[name]:
            shown = options[name] if len(options[name]) <= 20 else f"(list of length {len(options[name])})"
            return f"Value not in list ({name}: {value!r} not in {shown})"
    return True
