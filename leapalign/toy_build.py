"""What the embedded worlds' regeneration scripts share (``scripts/make_demo_world.py``, ``make_shapes_world.py``).

Pure torch: the seeded initialiser, the text-encoder reduction to the rows the prompts use, prompt
encoding as ``CLIPTextEncode`` does it, the cosine learning rate, atomic safetensors writing, and the
scripts' command line (``--out``, ``--short``, ``--set FIELD=VALUE``). The ComfyUI objects come in
as arguments (a ``clip``, a world-loader module), so nothing here imports ComfyUI.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
from dataclasses import replace
from pathlib import Path

import torch


def seeded_init(module: torch.nn.Module, generator: torch.Generator, embedding_std: float = 0.0,
                zero_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Deterministic init: norms 1, biases 0, matrices N(0, 1/fan_in), embeddings N(0, embedding_std)."""
    state = {}
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            continue
        if name.startswith(zero_prefixes) or name.endswith("bias"):
            value = torch.zeros(tensor.shape)
        elif name.endswith("scale") or (name.endswith(".weight") and tensor.ndim == 1):
            value = torch.ones(tensor.shape)
        elif embedding_std and ("embedding" in name or name.endswith("shared.weight")):
            value = torch.randn(tensor.shape, generator=generator) * embedding_std
        elif tensor.ndim >= 2:
            value = torch.randn(tensor.shape, generator=generator) / math.sqrt(tensor[0].numel())
        else:
            value = torch.randn(tensor.shape, generator=generator) * 0.02
        state[name] = value
    module.load_state_dict(state, strict=False)
    return state


def prompt_token_ids(clip, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLIP-L and T5 token ids ``prompts`` (and the empty prompt) use."""
    ids = {"l": set(), "t5xxl": set()}
    for prompt in [*prompts, ""]:
        tokens = clip.tokenize(prompt)
        for key in ids:
            ids[key].update(int(t[0]) for batch in tokens[key] for t in batch)
    return torch.tensor(sorted(ids["l"])), torch.tensor(sorted(ids["t5xxl"]))


def seeded_text_encoder(world, prompts: list[str], generator: torch.Generator, embedding_std: float,
                        embedding_keys: tuple[str, str]):
    """Seeded toy text encoders, reduced to the embedding rows ``prompts`` use; (clip, stored tensors).

    ``world`` is the world's loader module (``nodes/demo_world.py`` or ``nodes/shapes_world.py``);
    ``embedding_keys`` names the CLIP-L and T5 embedding tables.
    """
    clip = world.build_clip(None)
    state = seeded_init(clip.cond_stage_model, generator, embedding_std=embedding_std)
    rows = dict(zip(embedding_keys, prompt_token_ids(clip, prompts)))
    stored = {}
    for name, value in state.items():
        key = world.TEXT_PREFIX + name
        if name in rows:
            stored[key], stored[key + world.ROWS_SUFFIX] = world.sparse_rows(value, rows[name])
        else:
            stored[key] = value
    # What ships is what trains: rebuild the encoder from the stored (sparse) tensors.
    _, text_state = world.split_world_state(stored)
    return world.build_clip(text_state), stored


def encode_prompts(clip, prompts: list[str], tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 sequences [P, T, width], pooled CLIP-L [P, width]) exactly as CLIPTextEncode computes them;
    ``tokens`` refuses a prompt that does not encode to that many T5 tokens."""
    sequences, pooled = [], []
    for prompt in prompts:
        cond, pool = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
        if tokens is not None and cond.shape[1] != tokens:
            raise ValueError(f"prompt {prompt!r} encodes to {cond.shape[1]} T5 tokens, not {tokens}")
        sequences.append(cond[0])
        pooled.append(pool[0])
    return torch.stack(sequences), torch.stack(pooled)


def set_cosine_lr(optimizer: torch.optim.Optimizer, base_lr: float, step: int, total: int) -> None:
    lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    for group in optimizer.param_groups:
        group["lr"] = lr


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write atomically (a temporary file, then a rename), world-readable."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_command_line(argv: list[str] | None, description: str, recipe, short, assets_dir: Path):
    """(args, recipe): ``--out`` (default: the shipped assets), ``--short`` (``short``'s recipe) and any
    ``--set FIELD=VALUE`` on top of ``recipe`` (a frozen dataclass of the numbers that decide the bits)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=assets_dir, help="folder to write (default: the shipped assets)")
    parser.add_argument("--short", action="store_true", help="the shortened recipe the regeneration test runs")
    parser.add_argument("--set", metavar="FIELD=VALUE", action="append", default=[],
                        help="change one recipe field (experiments; the shipped files use the defaults)")
    args = parser.parse_args(argv)
    chosen = short if args.short else recipe
    fields = type(recipe).__dataclass_fields__
    for item in args.set:
        field, _, value = item.partition("=")
        if field not in fields:
            parser.error(f"--set {item}: unknown recipe field {field!r}; fields: {', '.join(fields)}")
        chosen = replace(chosen, **{field: type(getattr(chosen, field))(value)})
    args.shipped = not args.short and not args.set and args.out.resolve() == Path(assets_dir).resolve()
    return args, chosen
