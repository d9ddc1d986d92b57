"""Make ComfyUI's Flux differentiable without changing what it computes.

Two obstacles stand between ComfyUI's inference code and a correct backward pass:

* Flux blocks add into the residual stream in place (``img += ...``) after a LayerNorm saved it
  for backward, so autograd refuses (or, under ComfyUI's own checkpointing helper, silently gets
  wrong gradients). ``OutOfPlaceAdds`` turns those in-place adds into out-of-place ones while it is
  active: ``a += b`` then rebinds ``a`` to a new tensor, and ``x[i] += y`` still writes back through
  ``__setitem__``. It must be active only around the diffusion model (and *inside* any
  checkpointed function), never around a whole sampler, whose conditioning code relies on
  in-place writes into views.
* Models loaded by a node under the executor's ``torch.inference_mode()`` hold inference tensors,
  which autograd cannot save. ``ensure_autograd_tensors`` swaps them for ordinary copies.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_IN_PLACE_ADDS = {torch.Tensor.add_, torch.Tensor.__iadd__}


class OutOfPlaceAdds(TorchFunctionMode):
    """Route ``Tensor.add_``/``+=`` to ``torch.add`` while gradients are being recorded."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _IN_PLACE_ADDS and torch.is_grad_enabled():
            return torch.add(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def autograd_enabled():
    """Leave the executor's inference mode and record gradients (what every training path needs)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def ensure_autograd_tensors(module: torch.nn.Module) -> int:
    """Replace inference-mode parameters and buffers of ``module`` by ordinary tensors, in place.

    Returns how many tensors were replaced. Values are unchanged; ``requires_grad`` is kept.
    """
    replaced = 0
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None and param.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=param.requires_grad)
                    replaced += 1
            for name, buf in list(sub._buffers.items()):
                if buf is not None and buf.is_inference():
                    sub._buffers[name] = buf.clone()
                    replaced += 1
    return replaced
