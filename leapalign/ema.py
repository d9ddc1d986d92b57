"""Exponential moving average of the trainable weights (paper: decay 0.995).

Shadow weights start as a copy of the parameters and follow ``shadow = d shadow + (1 - d) param``
after every applied optimizer step (skipped steps do not update it). No warm-up schedule.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


class EMA:
    def __init__(self, params: Mapping[str, Tensor], decay: float = 0.995):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow: dict[str, Tensor] = {name: p.detach().clone() for name, p in params.items()}

    @torch.no_grad()
    def update(self, params: Mapping[str, Tensor]) -> None:
        for name, p in params.items():
            self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, params: Mapping[str, Tensor]) -> None:
        for name, p in params.items():
            p.copy_(self.shadow[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            raise ValueError(f"EMA state names {sorted(shadow)} do not match the parameters {sorted(self.shadow)}")
        for name, value in shadow.items():
            if value.shape != self.shadow[name].shape:
                raise ValueError(f"EMA tensor {name!r} has shape {tuple(value.shape)}, expected "
                                 f"{tuple(self.shadow[name].shape)}")
            self.shadow[name].copy_(value)
        self.decay = float(state.get("decay", self.decay))
