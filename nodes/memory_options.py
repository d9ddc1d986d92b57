"""Memory options of the training node, applied to ComfyUI objects, and the start-of-run memory plan.

Each option trades speed for memory and leaves the gradients unchanged (tests/integration/
test_memory_options.py compares them with the option off):

* block checkpointing: every Flux double/single block runs under ``torch.utils.checkpoint`` through
  ComfyUI's own block-replace patches (``set_model_patch_replace``). The patch calls the block it was
  registered for (ComfyUI's ``original_block`` closure binds its loop variable late and would run the
  last block when recomputed), and the autograd seam and that block's LoRA hooks are entered *inside*
  the checkpointed function, because recomputation during backward runs outside the model wrapper.
* decoder / reward checkpointing: each VAE decoder stage and each reward transformer block is
  checkpointed (``leapalign.checkpointing``) while training runs.
* reward in bf16: the reward's weights are cast for the run and cast back afterwards.
* text-encoder offload: every prompt is encoded once up front (the encoder caches conditioning), then
  ComfyUI unloads the text encoders from the device.
* weight offload: ComfyUI's own low-VRAM loading is asked to leave room for the step's activations
  (``EXTRA_RESERVED_VRAM``), so it keeps part of the diffusion weights off the device and streams them.

The LoRA and its AdamW state stay on the device in fp32: 16 bytes per parameter, 0.8 GiB for a rank-16
Flux.1-dev LoRA, less than any option above saves, so they are not offloaded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace

import torch

from ..leapalign.checkpointing import checkpointed_modules, modules_of_type, repeated_blocks
from ..leapalign.memory_plan import (
    HEADROOM,
    PRESETS,
    GiB,
    MemoryOptions,
    Plan,
    RewardShape,
    StepShape,
    choose,
    hpsv21_reward,
    plan,
    summary,
)
from .adapters import TRAINING_WRAPPER_KEY
from .autograd_seam import OutOfPlaceAdds
from .comfy_compat import training_mode
from .families import family_of

MEMORY_PLAN_EVENT = "leapalign.memory_plan"  # trainer_cli/progress.py prints it
VAE_SEGMENTS = ("ResnetBlock", "AttnBlock", "Upsample")
BLOCK_PREFIXES = ("double_blocks.", "single_blocks.")
# refuse only when the prediction is clearly beyond the card (the plan is a model, not a measurement)
REFUSE_FACTOR = 1.15
# encoding every prompt up front takes time and host memory (about 8 MiB per Flux prompt in fp32)
MAX_PRECOMPUTED_PROMPTS = 1024


# --------------------------------------------------------------------------- block checkpointing

def _block_patch(dm, kind: str, index: int, lora):
    prefix = f"{kind}s.{index}."
    block = getattr(dm, f"{kind}s")[index]

    def run_block(args: dict) -> dict:
        seam = OutOfPlaceAdds() if torch.is_grad_enabled() else contextlib.nullcontext()
        # training_mode here too: the recomputation runs during backward, outside the model wrapper, and
        # must take the same (autograd-capable) RoPE path as the forward did (ComfyUI 0.8+)
        with seam, training_mode(), lora.applied(dm, select=lambda path: path.startswith(prefix)):
            if kind == "double_block":
                img, txt = block(img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"],
                                 attn_mask=args.get("attn_mask"), transformer_options=args.get("transformer_options"))
                return {"img": img, "txt": txt}
            return {"img": block(args["img"], vec=args["vec"], pe=args["pe"], attn_mask=args.get("attn_mask"),
                                 transformer_options=args.get("transformer_options"))}

    def patch(args: dict, extra: dict) -> dict:
        frozen = dict(args)
        if isinstance(frozen.get("transformer_options"), dict):
            frozen["transformer_options"] = dict(frozen["transformer_options"])
        if not torch.is_grad_enabled():
            return run_block(frozen)
        return torch.utils.checkpoint.checkpoint(run_block, frozen, use_reentrant=False)

    return patch


def block_checkpointed_clone(model, lora):
    """Like ``adapters.training_clone``, with every transformer block checkpointed (see module doc)."""
    import comfy.patcher_extension

    def outside_blocks(path: str) -> bool:
        return not path.startswith(BLOCK_PREFIXES)

    def wrapper(executor, *args, **kwargs):
        seam = OutOfPlaceAdds() if torch.is_grad_enabled() else contextlib.nullcontext()
        with seam, training_mode(), lora.applied(executor.class_obj, select=outside_blocks):
            return executor(*args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, TRAINING_WRAPPER_KEY, wrapper)
    dm = model.model.diffusion_model
    for kind in ("double_block", "single_block"):
        for i in range(len(getattr(dm, f"{kind}s"))):
            clone.set_model_patch_replace(_block_patch(dm, kind, i, lora), "dit", kind, i)
    return clone


# --------------------------------------------------------------------------- other options

def offload_text_encoders(clip, encoder, prompts) -> int:
    """Encode every prompt once (cached by ``encoder``), then unload ``clip`` from the device; returns unloads."""
    import comfy.model_management as mm

    for text in dict.fromkeys(prompts):
        encoder.encode_one(text)
    unloaded = 0
    for i in reversed(range(len(mm.current_loaded_models))):
        loaded = mm.current_loaded_models[i]
        patcher = loaded.model
        if patcher is not None and patcher.is_clone(clip.patcher):
            loaded.model_unload()
            mm.current_loaded_models.pop(i)
            unloaded += 1
    mm.soft_empty_cache()
    return unloaded


@contextlib.contextmanager
def reserved_vram(extra_bytes: float) -> Iterator[None]:
    """Make ComfyUI's model loading leave ``extra_bytes`` free (it offloads weights to do so)."""
    import comfy.model_management as mm

    before = mm.EXTRA_RESERVED_VRAM
    mm.EXTRA_RESERVED_VRAM = before + int(extra_bytes)
    try:
        yield
    finally:
        mm.EXTRA_RESERVED_VRAM = before


@contextlib.contextmanager
def reward_dtype(reward, dtype: torch.dtype) -> Iterator[None]:
    """Cast the reward's weights for the run, and back afterwards (other nodes share the object)."""
    params = list(reward.parameters()) if isinstance(reward, torch.nn.Module) else []
    before = params[0].dtype if params else None
    if before is None or before == dtype:
        yield
        return
    reward.to(dtype)
    try:
        yield
    finally:
        reward.to(before)


# --------------------------------------------------------------------------- plan

def _bytes_per_param(module) -> float:
    params = list(module.parameters()) if isinstance(module, torch.nn.Module) else []
    count = sum(p.numel() for p in params)
    return sum(p.numel() * p.element_size() for p in params) / count if count else 2.0


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if isinstance(module, torch.nn.Module) else 0


def step_shape(model, vae, reward, clip, lora, width: int, height: int, batch: int, velocity_calls: int = 2,
               text_tokens: int = 512) -> StepShape:
    """The graph's model, VAE, reward and text encoders, as the plan sees them."""
    dm = model.model.diffusion_model
    decoder = getattr(getattr(vae, "first_stage_model", None), "decoder", None)
    measured = hpsv21_reward()
    if getattr(reward, "name", "") == "hpsv2.1" and abs(_count(reward) / measured.params - 1) < 0.1:
        reward_shape = replace(measured, bytes_per_param=round(_bytes_per_param(reward)))
    else:
        reward_shape = RewardShape(getattr(reward, "name", type(reward).__name__), _count(reward),
                                   round(_bytes_per_param(reward)), measured=False)
    text = getattr(clip, "cond_stage_model", None)
    return StepShape(double_blocks=len(dm.double_blocks), single_blocks=len(dm.single_blocks),
                     hidden_size=int(dm.hidden_size), diffusion_params=_count(dm),
                     weight_bytes_per_param=_bytes_per_param(dm),
                     double_block_params=_count(dm.double_blocks[0]) if len(dm.double_blocks) else 0,
                     width=width, height=height, batch=batch, velocity_calls=velocity_calls, text_tokens=text_tokens,
                     lora_params=_count(lora), vae_decoder_params=_count(decoder) if decoder is not None else 0,
                     vae_bytes_per_param=round(_bytes_per_param(decoder)) if decoder is not None else 2,
                     reward=reward_shape, text_encoder_params=_count(text),
                     text_encoder_bytes_per_param=_bytes_per_param(text))


def device_gib(device) -> float | None:
    """Total memory of a CUDA device in GiB; None elsewhere (no device check on CPU)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(device).total_memory / GiB


def resolve(preset: str, shape: StepShape, device) -> tuple[Plan, float | None]:
    """The plan for ``preset`` and the card it is checked against (the preset's size, else the device's)."""
    if preset not in PRESETS:
        raise ValueError(f"memory_preset {preset!r} is not one of {', '.join(PRESETS)}")
    card = PRESETS[preset] or device_gib(device)
    if preset == "off" or card is None:
        return plan(shape), card
    return choose(shape, card), card


def check_fits(p: Plan | None, device) -> str | None:
    """An error message when the plan clearly exceeds the device (None when it fits, on CPU, or without a plan)."""
    if p is None:
        return None
    total = device_gib(device)
    if total is None or p.peak <= total * GiB * REFUSE_FACTOR:
        if total is not None and p.peak > total * GiB * HEADROOM:
            logging.warning("LeapAlign: the predicted peak %.1f GiB is close to the device's %.1f GiB",
                            p.peak / GiB, total)
        return None
    return (f"the memory plan predicts {p.peak / GiB:.1f} GiB, more than this device's {total:.1f} GiB "
            f"(largest part: {p.largest()}); choose a memory_preset that fits (e.g. 'fit {int(total)} GB'), "
            "or lower the resolution or batch size")


class MemorySetup:
    """The options one training run uses, and the plan printed before it starts."""

    def __init__(self, preset: str, model, vae, reward, clip, lora, width: int, height: int, batch: int,
                 text_tokens: int = 512):
        family = family_of(model)
        if not family.memory_plan:  # the plan's figures are Flux.1's block stack
            if PRESETS.get(preset):
                raise ValueError(f"memory_preset {preset!r}: the memory plan is measured for Flux.1 only; "
                                 f"use auto or off for {family.display}")
            self.shape = self.plan = self.card = None
            self.options = MemoryOptions()
            return
        self.shape = step_shape(model, vae, reward, clip, lora, width, height, batch, text_tokens=text_tokens)
        self.plan, self.card = resolve(preset, self.shape, model.load_device)
        self.options: MemoryOptions = self.plan.options

    def report(self) -> str:
        """Print the plan (server console) and send it as a ``leapalign.memory_plan`` event (the CLI prints it)."""
        if self.plan is None:
            text = "LeapAlign memory plan: measured for Flux.1 only; this model trains without memory options"
            print(text, flush=True)
            return text
        text = summary(self.plan, self.card)
        print(text, flush=True)
        try:
            import server

            instance = getattr(server.PromptServer, "instance", None)
        except ImportError:
            instance = None
        if instance is not None:
            instance.send_sync(MEMORY_PLAN_EVENT, {"text": text, "predicted_peak_bytes": self.plan.peak,
                                                   "options": self.options.enabled()})
        return text

    def training_clone(self, model, lora, default):
        return block_checkpointed_clone(model, lora) if self.options.checkpoint_blocks else default(model, lora)

    @contextlib.contextmanager
    def applied(self, vae, reward, clip=None, encoder=None, prompts=()) -> Iterator[None]:
        """Decoder/reward checkpointing, reward dtype, text-encoder offload and reserved VRAM for the run."""
        o = self.options
        decoder = getattr(getattr(vae, "first_stage_model", None), "decoder", None)
        with contextlib.ExitStack() as stack:
            if o.checkpoint_decoder and decoder is not None:
                stack.enter_context(checkpointed_modules(modules_of_type(decoder, VAE_SEGMENTS)))
            if o.reward_bf16:
                stack.enter_context(reward_dtype(reward, torch.bfloat16))
            if o.checkpoint_reward and isinstance(reward, torch.nn.Module):
                stack.enter_context(checkpointed_modules(repeated_blocks(reward)))
            if o.offload_text_encoders and clip is not None and encoder is not None:
                if len(set(prompts)) <= MAX_PRECOMPUTED_PROMPTS:
                    offload_text_encoders(clip, encoder, prompts)
                else:
                    logging.warning("LeapAlign: %d prompts are too many to encode up front; the text encoders "
                                    "stay loaded (ComfyUI unloads them when the device runs short)", len(set(prompts)))
            if o.weight_offload:
                weights = self.plan.components["diffusion weights"]
                stack.enter_context(reserved_vram(self.plan.peak - weights))
            yield
