"""Trainable LoRA that never renames or mutates the model it trains (any model family).

Why forward hooks and not peft's LoRA layers: peft replaces each targeted ``nn.Linear`` by a wrapper
module, which renames the weight keys (``qkv.weight`` -> ``qkv.base_layer.weight``) and mutates the
module object that every ComfyUI ``ModelPatcher`` clone shares. ComfyUI patches weights by key, so
after peft other LoRAs in the graph are silently dropped and untrained clones see the adapter too.
Here each targeted linear keeps its name and weights; a forward hook adds ``scale * up(down(x))`` to
its *output*, so whatever ComfyUI does to the weight (fp8 storage, manual casting, another LoRA
patched in, low-VRAM offload) is left intact. The hooks exist only inside :meth:`LoRAAdapter.applied`,
so clones that are not training are unaffected. Initialisation follows peft's LoRA default
(kaiming-uniform ``down`` with ``a = sqrt(5)``, zero ``up``), so training starts at the base model.

This module knows no model family: which linears to train (regular expressions over module paths)
and how the file names them come from the caller (in the node pack, the family modules under
``nodes/families/``). Two exports are offered: kohya's layout on the model's own module paths
(``lora_unet_<path with _>.lora_down.weight`` ``(r, in)``, ``.lora_up.weight`` ``(out, r)``,
``.alpha``), and :meth:`LoRAAdapter.factors` (per module path the down/up matrices with the scale
folded into ``up``) from which a family writes any other layout (diffusers' split q/k/v, say).

The Flux.1 target patterns below (``TARGET_PRESETS``) serve the core's tests and benchmarks; the node
pack takes its targets from its family modules.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write_bytes

KOHYA_PREFIX = "lora_unet_"

# Kept for existing callers (see module doc): the Flux.1 target patterns. Module-path patterns are
# regular expressions matched with re.search against paths such as "double_blocks.0.img_attn.qkv".
DEFAULT_TARGETS: tuple[str, ...] = (
    r"^double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)$",
    r"^double_blocks\.\d+\.(img|txt)_mlp\.(0|2)$",
    r"^single_blocks\.\d+\.linear(1|2)$",
)
MODULATION_TARGETS: tuple[str, ...] = (
    r"^double_blocks\.\d+\.(img|txt)_mod\.lin$",
    r"^single_blocks\.\d+\.modulation\.lin$",
)
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attention+mlp": DEFAULT_TARGETS,
    "attention+mlp+modulation": DEFAULT_TARGETS + MODULATION_TARGETS,
    "attention": (r"^double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)$", r"^single_blocks\.\d+\.linear1$"),
}


class LoRAError(ValueError):
    """A LoRA cannot be built or loaded as asked (no targets, rank too large, mismatched file)."""


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 16
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    init_seed: int = 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass
class _Target:
    path: str
    in_features: int
    out_features: int


def kohya_name(path: str) -> str:
    """``double_blocks.0.img_attn.qkv`` -> ``lora_unet_double_blocks_0_img_attn_qkv``."""
    return KOHYA_PREFIX + path.replace(".", "_")


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear layer, including ComfyUI's cast/fp8 linears (all subclass nn.Linear)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return None


def find_targets(root: nn.Module, patterns: Sequence[str]) -> list[_Target]:
    compiled = [re.compile(p) for p in patterns]
    found = []
    for path, module in root.named_modules():
        shape = _linear_shape(module)
        if shape is not None and any(c.search(path) for c in compiled):
            found.append(_Target(path, shape[0], shape[1]))
    return found


class LoRAAdapter(nn.Module):
    """LoRA adapters for the linears of ``root`` whose module paths match ``config.targets``.

    Parameters live in two ``nn.ModuleDict``s (``down``/``up``) keyed by the kohya name of the
    targeted module (ModuleDict keys cannot contain dots); ``paths`` maps those keys back.
    """

    def __init__(self, root: nn.Module, config: LoRAConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        if config.rank < 1:
            raise LoRAError(f"LoRA rank must be at least 1, got {config.rank}")
        targets = find_targets(root, config.targets)
        if not targets:
            raise LoRAError(f"no linear layer of the model matches the LoRA targets {list(config.targets)}; "
                            "check the target patterns against the model's module names")
        too_small = [t for t in targets if config.rank > min(t.in_features, t.out_features)]
        if too_small:
            worst = min(too_small, key=lambda t: min(t.in_features, t.out_features))
            limit = min(min(t.in_features, t.out_features) for t in targets)
            raise LoRAError(f"LoRA rank {config.rank} is larger than layer {worst.path} allows "
                            f"({worst.in_features} -> {worst.out_features}); use a rank of at most {limit}")
        self.config = config
        self.paths: dict[str, str] = {}
        self.down = nn.ModuleDict()
        self.up = nn.ModuleDict()
        gen = torch.Generator().manual_seed(config.init_seed)
        for target in targets:
            key = kohya_name(target.path)[len(KOHYA_PREFIX):]
            self.paths[key] = target.path
            down = nn.Linear(target.in_features, config.rank, bias=False, dtype=dtype)
            up = nn.Linear(config.rank, target.out_features, bias=False, dtype=dtype)
            nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5), generator=gen)
            nn.init.zeros_(up.weight)
            self.down[key] = down
            self.up[key] = up

    @property
    def scale(self) -> float:
        return self.config.scale

    def named_trainable(self) -> dict[str, nn.Parameter]:
        """The parameters to optimise, keyed ``<kohya name>.lora_down.weight`` / ``.lora_up.weight``."""
        out = {}
        for key in self.paths:
            out[f"{KOHYA_PREFIX}{key}.lora_down.weight"] = self.down[key].weight
            out[f"{KOHYA_PREFIX}{key}.lora_up.weight"] = self.up[key].weight
        return out

    def delta(self, key: str, x: torch.Tensor) -> torch.Tensor:
        down = self.down[key]
        return self.up[key](down(x.to(down.weight.dtype))) * self.scale

    @contextlib.contextmanager
    def applied(self, root: nn.Module, select: Callable[[str], bool] | None = None) -> Iterator[None]:
        """Add the adapters to ``root``'s targeted outputs for the duration of the block.

        ``select(path)`` limits the hooks to some targets (block checkpointing hooks each block's
        own targets inside its checkpointed function, so recomputation sees them too).
        """
        handles = []
        try:
            for key, path in self.paths.items():
                if select is not None and not select(path):
                    continue
                module = root.get_submodule(path)
                handles.append(module.register_forward_hook(self._hook(key)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, key: str):
        def hook(module, args, output):
            return output + self.delta(key, args[0]).to(output.dtype)
        return hook

    # ----- kohya export / import -------------------------------------------------------------

    def kohya_state_dict(self, dtype: torch.dtype = torch.float32,
                         weights: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The adapter in kohya's layout; ``weights`` (keyed like :meth:`named_trainable`, e.g. EMA
        shadow weights) replaces the live parameters."""
        source = dict(self.named_trainable())
        if weights is not None:
            missing = sorted(set(source) - set(weights))
            if missing:
                raise LoRAError(f"replacement weights lack {len(missing)} LoRA tensors, e.g. {missing[:2]}")
            source = {name: weights[name] for name in source}
        sd: dict[str, torch.Tensor] = {}
        alpha = torch.tensor(float(self.config.alpha), dtype=dtype)
        for name, tensor in source.items():
            sd[name] = tensor.detach().to("cpu", dtype).contiguous()
        for key in self.paths:
            sd[f"{KOHYA_PREFIX}{key}.alpha"] = alpha.clone()
        return sd

    def factors(self, weights: Mapping[str, torch.Tensor] | None = None,
                dtype: torch.dtype = torch.float32) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per targeted module path, ``(down (r, in), up (out, r))`` with the scale folded into ``up``.

        ``up @ down`` is the layer's weight change, so a writer needs no alpha (loaders that find none
        apply scale 1, which is then right). ``weights`` replaces the live parameters as in
        :meth:`kohya_state_dict`.
        """
        sd = self.kohya_state_dict(dtype=torch.float32, weights=weights)
        out = {}
        for key, path in self.paths.items():
            name = KOHYA_PREFIX + key
            down = sd[f"{name}.lora_down.weight"]
            up = sd[f"{name}.lora_up.weight"] * self.scale
            out[path] = (down.to(dtype).contiguous(), up.to(dtype).contiguous())
        return out

    def load_kohya_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        """Load weights written by :meth:`kohya_state_dict` (for resuming); every key must match."""
        expected = set(self.kohya_state_dict())
        missing = sorted(expected - set(sd))
        unexpected = sorted(set(sd) - expected)
        if missing or unexpected:
            raise LoRAError(f"LoRA file does not match this adapter: {len(missing)} missing keys "
                            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
                            "use the same targets and rank as the run that wrote it")
        with torch.no_grad():
            for key in self.paths:
                name = KOHYA_PREFIX + key
                self.down[key].weight.copy_(sd[f"{name}.lora_down.weight"])
                self.up[key].weight.copy_(sd[f"{name}.lora_up.weight"])
                alpha = float(sd[f"{name}.alpha"])
                if not math.isclose(alpha, self.config.alpha, rel_tol=1e-6):
                    raise LoRAError(f"LoRA file has alpha {alpha} for {name}, this adapter uses {self.config.alpha}")


@dataclass
class LoRAMetadata:
    """What a saved LeapAlign LoRA says about itself (safetensors metadata is str -> str)."""

    base_model: str = ""
    method: str = "leapalign"
    parameters: dict = field(default_factory=dict)
    steps: int = 0
    reward_before: float | None = None
    reward_after: float | None = None
    base_model_version: str = ""
    """kohya's ``ss_base_model_version``: the model family's own word (``flux1``, ``sd3``), set by its family."""

    def to_safetensors(self, config: LoRAConfig) -> dict[str, str]:
        import json

        out = {
            "format": "pt",
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(config.rank),
            "ss_network_alpha": str(config.alpha),
            "ss_base_model_version": self.base_model_version,
            "leapalign_base_model": self.base_model,
            "leapalign_method": self.method,
            "leapalign_parameters": json.dumps(self.parameters, sort_keys=True, default=str),
            "leapalign_steps": str(self.steps),
            "leapalign_lora_targets": json.dumps(list(config.targets)),
        }
        if self.reward_before is not None:
            out["leapalign_reward_before"] = repr(float(self.reward_before))
        if self.reward_after is not None:
            out["leapalign_reward_after"] = repr(float(self.reward_after))
        return out


def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header keys sorted.

    safetensors keeps the metadata in a hash map, so the key order, and with it the file's bytes,
    changes from process to process. Sorting makes equal LoRAs byte-identical files (tensor entries
    carry explicit offsets, so their order in the header is free; padding stays 8-byte aligned).
    """
    import json

    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + size:]


def save_kohya(sd: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``sd`` as safetensors atomically (a reader never sees a partial file at ``path``) and
    deterministically (the same tensors and metadata give the same bytes)."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = canonical_safetensors(save(dict(sd), metadata=dict(metadata or {})))
    atomic_write_bytes(path, blob)
    return path
