"""Gradient checkpointing of chosen submodules, switched on for a while without changing any class.

Why a context manager over instances: the decoder and reward models come from ComfyUI and open_clip,
built by their own loaders; the training run needs them checkpointed only while it lasts, and the
same objects are used by other nodes of the graph afterwards. Each selected module's ``forward`` is
replaced on the instance by one that runs the original under ``torch.utils.checkpoint`` (non-reentrant)
while gradients are recorded, and restored on exit. Checkpointing recomputes the module during backward,
so gradients are unchanged; the memory kept is the module's inputs instead of its activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _checkpointed(forward: Callable) -> Callable:
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


@contextlib.contextmanager
def checkpointed_modules(modules: list[nn.Module]) -> Iterator[int]:
    """Checkpoint each of ``modules`` (which must not contain one another) while the block runs; yields the count."""
    patched = []
    try:
        for module in modules:
            module.forward = _checkpointed(module.forward)
            patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward  # the instance attribute; the class's forward shows through again


def repeated_blocks(root: nn.Module, min_count: int = 4) -> list[nn.Module]:
    """The entries of every ``nn.ModuleList`` of at least ``min_count`` modules (a transformer's layers).

    Outermost lists win: entries of a list nested inside a selected block are not selected again.
    """
    chosen: list[nn.Module] = []
    inside: set[int] = set()
    for module in root.modules():
        if id(module) in inside:
            continue
        if isinstance(module, nn.ModuleList) and len(module) >= min_count:
            chosen.extend(module)
            inside.update(id(m) for block in module for m in block.modules())
    return chosen


def modules_of_type(root: nn.Module, names: tuple[str, ...]) -> list[nn.Module]:
    """Submodules whose class name is one of ``names`` (outermost only)."""
    chosen: list[nn.Module] = []
    inside: set[int] = set()
    for module in root.modules():
        if id(module) in inside or type(module).__name__ not in names:
            continue
        chosen.append(module)
        inside.update(id(m) for m in module.modules())
    return chosen
