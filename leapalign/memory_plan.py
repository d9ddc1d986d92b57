"""Predicted peak device memory of one LeapAlign step, and a preset that picks memory options to fit a card.

Why a model instead of a trial run: a step that does not fit fails after minutes of loading, and on
the cards people own (24 GB) the answer depends on options (checkpointing, offloading) that cost
speed. The prediction sums per-component figures measured at real width by ``bench/memory_plan.py``
(bytes autograd saves for backward, counted on the ``meta`` device; stored in
``leapalign/assets/memory_figures.json``) and weight bytes counted from parameter shapes:

    peak = weights (diffusion model, VAE decoder, reward, text encoders unless offloaded)
         + LoRA parameters, gradients and AdamW state (fp32, 16 bytes per parameter)
         + activations saved by the velocity calls with gradient (two for LeapAlign)
         + activations saved by the decoder and the reward
         + the largest checkpointed segment recomputed during backward, twice (its activations and
           their gradients)

Activations scale linearly with tokens (flash attention: nothing quadratic is saved), with batch and
with the number of blocks; a model of another width is scaled by ``hidden / 3072``. Sizes are in
bytes; ``GiB`` = 2**30 bytes, the unit ``torch.cuda`` reports.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

GiB = 2**30
FIGURES_PATH = Path(__file__).parent / "assets" / "memory_figures.json"
# A card's headroom for the CUDA context, cuDNN/cuBLAS workspaces and allocator fragmentation.
HEADROOM = 0.92
PRESETS: dict[str, float | None] = {"off": None, "auto": None, "fit 12 GB": 12.0, "fit 16 GB": 16.0,
                                    "fit 24 GB": 24.0, "fit 48 GB": 48.0, "fit 80 GB": 80.0}


@functools.cache
def figures() -> dict:
    return json.loads(FIGURES_PATH.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class MemoryOptions:
    """The memory options of a training run (each leaves the gradients unchanged; see ``nodes/memory_options.py``)."""

    checkpoint_blocks: bool = False      # recompute each transformer block during backward
    checkpoint_decoder: bool = False     # recompute each VAE decoder stage during backward
    reward_bf16: bool = False            # run the reward model's weights in bf16
    checkpoint_reward: bool = False      # recompute each reward transformer block during backward
    offload_text_encoders: bool = False  # encode every prompt once, then move the text encoders off the device
    weight_offload: bool = False         # let ComfyUI keep part of the diffusion weights off the device

    def enabled(self) -> list[str]:
        return [name for name, on in vars(self).items() if on]


# the order a preset switches options on: least slowdown per byte saved first
PRESET_ORDER = ("offload_text_encoders", "reward_bf16", "checkpoint_reward", "checkpoint_blocks",
                "checkpoint_decoder", "weight_offload")


@dataclass(frozen=True)
class RewardShape:
    name: str
    params: int
    bytes_per_param: int = 4
    saved: float = 0.0               # activation bytes saved per image
    checkpointed_inputs: float = 0.0  # what per-block checkpointing keeps per image
    unsegmented: float = 0.0          # saved outside the checkpointed blocks per image
    max_segment: float = 0.0          # one block's saved bytes per image
    measured: bool = True


def hpsv21_reward(bytes_per_param: int = 4) -> RewardShape:
    f = figures()["hpsv2.1"]
    return RewardShape("hpsv2.1 (ViT-H-14, 224)", f["params"], bytes_per_param, f["saved"], f["checkpointed_inputs"],
                       f["unsegmented_saved"], f["max_segment"])


@dataclass(frozen=True)
class StepShape:
    """What the plan needs to know about a training graph."""

    double_blocks: int
    single_blocks: int
    hidden_size: int
    diffusion_params: int
    weight_bytes_per_param: float        # 1 for fp8, 2 for bf16/fp16, 4 for fp32
    double_block_params: int
    width: int
    height: int
    batch: int = 1
    text_tokens: int = 512
    velocity_calls: int = 2               # velocity calls with gradient per sample (LeapAlign: two leaps)
    lora_params: int = 0
    vae_decoder_params: int = 0
    vae_bytes_per_param: int = 2
    reward: RewardShape = field(default_factory=lambda: RewardShape("reward", 0, measured=False))
    text_encoder_params: int = 0
    text_encoder_bytes_per_param: float = 1

    @property
    def tokens(self) -> int:
        return (self.width // 16) * (self.height // 16) + self.text_tokens

    @property
    def pixels(self) -> int:
        return self.width * self.height


def flux1_dev(width: int = 720, height: int = 720, batch: int = 1, weight_bytes: float = 1.0,
              reward: RewardShape | None = None) -> StepShape:
    """Flux.1-dev (fp8 weights by default) with its VAE, T5-XXL + CLIP-L in fp8, a rank-16 LoRA."""
    f, te = figures()["flux"], figures()["text_encoders"]
    return StepShape(double_blocks=f["double_blocks"], single_blocks=f["single_blocks"], hidden_size=f["hidden_size"],
                     diffusion_params=f["flux1_dev_params"], weight_bytes_per_param=weight_bytes,
                     double_block_params=f["double_block_params"], width=width, height=height, batch=batch,
                     lora_params=f["lora_params_rank16_attention_mlp"],
                     vae_decoder_params=figures()["vae_decoder"]["params"],
                     reward=reward or hpsv21_reward(), text_encoder_params=te["t5xxl_params"] + te["clip_l_params"],
                     text_encoder_bytes_per_param=1)


@dataclass
class Plan:
    shape: StepShape
    options: MemoryOptions
    components: dict[str, float]
    notes: list[str]

    @property
    def peak(self) -> float:
        return sum(self.components.values())

    def largest(self) -> str:
        return max(self.components, key=self.components.get)


def _velocity(shape: StepShape, options: MemoryOptions) -> tuple[float, float]:
    """(activation bytes kept by the velocity calls, largest recomputed block) for the whole step."""
    per = figures()["flux"]["per_token"]
    scale = shape.tokens * shape.batch * shape.hidden_size / figures()["flux"]["hidden_size"]
    blocks = shape.double_blocks + shape.single_blocks
    if options.checkpoint_blocks:
        kept = shape.double_blocks * per["double_inputs"] + shape.single_blocks * per["single_inputs"] + per["rest_saved"]
        return shape.velocity_calls * kept * scale, max(per["double_saved"], per["single_saved"]) * scale if blocks else 0.0
    kept = shape.double_blocks * per["double_saved"] + shape.single_blocks * per["single_saved"] + per["rest_saved"]
    return shape.velocity_calls * kept * scale, 0.0


def _decoder(shape: StepShape, options: MemoryOptions) -> tuple[float, float]:
    d = figures()["vae_decoder"]
    pixels = shape.pixels * shape.batch
    if options.checkpoint_decoder:
        return (d["checkpointed_inputs_per_pixel"] + d["unsegmented_saved_per_pixel"]) * pixels, d["max_segment_per_pixel"] * pixels
    return d["saved_per_pixel"] * pixels, 0.0


def _reward(shape: StepShape, options: MemoryOptions) -> tuple[float, float, float]:
    """(weights, kept activations, largest recomputed block); activations measured in bf16."""
    r = shape.reward
    bpp = 2 if options.reward_bf16 else r.bytes_per_param
    act = 1.0 if options.reward_bf16 else r.bytes_per_param / 2
    if options.checkpoint_reward:
        return r.params * bpp, (r.checkpointed_inputs + r.unsegmented) * act * shape.batch, r.max_segment * act * shape.batch
    return r.params * bpp, r.saved * act * shape.batch, 0.0


def plan(shape: StepShape, options: MemoryOptions = MemoryOptions(), budget: float | None = None) -> Plan:
    """The predicted peak of one training step, by component (bytes). ``budget`` sizes weight offloading."""
    velocity, velocity_segment = _velocity(shape, options)
    decoder, decoder_segment = _decoder(shape, options)
    reward_weights, reward, reward_segment = _reward(shape, options)
    notes = []
    parts = {
        "diffusion weights": shape.diffusion_params * shape.weight_bytes_per_param,
        "LoRA + grads + AdamW (fp32)": shape.lora_params * 16.0,
        "velocity activations": velocity,
        "VAE decoder weights": shape.vae_decoder_params * shape.vae_bytes_per_param,
        "decoder activations": decoder,
        "reward weights": reward_weights,
        "reward activations": reward,
        "text encoders": 0.0 if options.offload_text_encoders else shape.text_encoder_params * shape.text_encoder_bytes_per_param,
        "recompute peak (largest segment x2)": 2 * max(velocity_segment, decoder_segment, reward_segment),
    }
    if shape.weight_bytes_per_param < 2:
        # fp8 weights are cast to bf16 per layer; autograd keeps the casts for the input gradient
        blocks = 1 if options.checkpoint_blocks else shape.velocity_calls * (shape.double_blocks + shape.single_blocks)
        parts["bf16 casts of fp8 weights"] = blocks * shape.double_block_params * 2.0
    if not shape.reward.measured:
        notes.append(f"the reward ({shape.reward.name}) has no measured activation figure: only its weights are counted")
    if options.weight_offload and budget is not None:
        spare = budget - (sum(parts.values()) - parts["diffusion weights"])
        resident = max(min(parts["diffusion weights"], spare), 0.0)
        if resident < parts["diffusion weights"]:
            notes.append(f"ComfyUI keeps {(parts['diffusion weights'] - resident) / GiB:.1f} GiB of diffusion weights "
                         "off the device and streams them per layer (slower)")
        parts["diffusion weights"] = resident
    return Plan(shape, options, parts, notes)


def choose(shape: StepShape, card_gib: float | None) -> Plan:
    """Switch options on in ``PRESET_ORDER`` until the plan fits ``card_gib`` (with headroom); None: no options."""
    if card_gib is None:
        return plan(shape)
    budget = card_gib * GiB * HEADROOM
    options = MemoryOptions()
    current = plan(shape, options, budget)
    for name in PRESET_ORDER:
        if current.peak <= budget:
            break
        options = replace(options, **{name: True})
        current = plan(shape, options, budget)
    return current


def summary(p: Plan, card_gib: float | None = None) -> str:
    """The start-of-run table: each component, the predicted peak, and whether it fits ``card_gib``."""
    s = p.shape
    lines = [f"LeapAlign memory plan: {s.width}x{s.height}, batch {s.batch}, {s.tokens} tokens, "
             f"{s.double_blocks}+{s.single_blocks} blocks, hidden {s.hidden_size}, reward {s.reward.name}",
             f"  options: {', '.join(p.options.enabled()) or 'none'}"]
    for name, value in sorted(p.components.items(), key=lambda kv: -kv[1]):
        if value:
            lines.append(f"  {name:38s} {value / GiB:7.2f} GiB")
    lines.append(f"  {'predicted peak':38s} {p.peak / GiB:7.2f} GiB")
    if card_gib is not None:
        budget = card_gib * HEADROOM
        verdict = "fits" if p.peak <= budget * GiB else f"does NOT fit (largest part: {p.largest()})"
        lines.append(f"  device {card_gib:.1f} GiB (usable {budget:.1f} GiB): {verdict}")
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)
