"""Bytes autograd saves for backward, counted without holding them: works on the ``meta`` device.

Why: a real-width Flux.1-dev block at 720x720 tokens, the Flux VAE decoder at 720x720 and ViT-H-14 at
224 do not fit this machine's memory, but the bytes a backward pass keeps only depend on shapes and
dtypes. Running the real modules on ``meta`` tensors under ``saved_tensors_hooks`` gives those bytes
exactly, for free. Two differences from a GPU run are handled here:

* ``meta`` has no flash attention, so ``scaled_dot_product_attention`` would save the full attention
  matrix. :func:`flash_attention_cost` stands in for it and saves what a flash kernel saves
  (q, k, v, out and a float32 log-sum-exp per query), which is also what CPU's flash kernel saves.
* Storages cannot be told apart by ``data_ptr`` on ``meta`` (all are 0), so tensors are deduplicated
  by their base tensor's identity (views of one tensor count once), holding references so ids stay
  unique. :func:`saved_bytes` on real tensors with the same dedup matches the ``data_ptr`` count
  (checked by ``bench.memory_plan.validate``).

Per-module figures (``ModuleMeter``) are what block checkpointing needs: the bytes each block saves
(recomputed one at a time under checkpointing) and the bytes of its inputs (what a checkpoint keeps).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _base(t: torch.Tensor) -> torch.Tensor:
    while t._base is not None:
        t = t._base
    return t


class SavedBytes:
    """A running count of unique activation bytes saved for backward (parameters excluded)."""

    def __init__(self, parameters: Iterable[torch.Tensor] = ()):
        self.param_ids = {id(p) for p in parameters}
        self.seen: dict[int, torch.Tensor] = {}
        self.activation_bytes = 0
        self.weight_bytes = 0  # parameters saved (e.g. a linear's weight for the input gradient)
        self.by_pointer: dict[int, int] = {}  # real tensors only: storages by address, as bench.memory counts

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        base = _base(t)
        if not t.is_meta and id(base) not in self.param_ids:
            storage = t.untyped_storage()
            self.by_pointer.setdefault(storage.data_ptr(), storage.nbytes())
        if id(base) not in self.seen:
            self.seen[id(base)] = base  # keep alive: ids must stay unique while counting
            if id(base) in self.param_ids:
                self.weight_bytes += tensor_bytes(base)
            else:
                self.activation_bytes += tensor_bytes(base)
        return t

    @contextlib.contextmanager
    def recording(self) -> Iterator[SavedBytes]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            yield self


class ModuleMeter:
    """Per module of interest: activation bytes saved while it ran, and the bytes of its tensor inputs."""

    def __init__(self, counter: SavedBytes, modules: dict[str, torch.nn.Module]):
        self.counter = counter
        self.saved: dict[str, int] = {}
        self.inputs: dict[str, int] = {}
        self._start: dict[str, int] = {}
        self.handles = []
        for name, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._post(name), with_kwargs=True))

    def _pre(self, name: str):
        def hook(module, args, kwargs):
            self._start[name] = self.counter.activation_bytes
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            self.inputs[name] = self.inputs.get(name, 0) + sum(tensor_bytes(t) for t in tensors)
        return hook

    def _post(self, name: str):
        def hook(module, args, kwargs, output):
            self.saved[name] = self.saved.get(name, 0) + self.counter.activation_bytes - self._start.pop(name)
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


class _FlashCost(torch.autograd.Function):
    """Attention whose saved tensors are a flash kernel's: q, k, v, out, float32 log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


def flash_attention_cost(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                         **kwargs):
    """ComfyUI ``optimized_attention`` signature; on ``meta`` only (values are not computed)."""
    if not skip_reshape:
        b, n, _ = q.shape
        q, k, v = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
    out = _FlashCost.apply(q, k, v)
    if skip_output_reshape:
        return out
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(tensor_bytes(p) for p in module.parameters())


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
