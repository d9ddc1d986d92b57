"""Full backprop (AlignProp-style): DRaFT-K with K = N, gradient-checkpointed per velocity call by default."""

from __future__ import annotations

from ..config import MethodConfig
from .draft_k import DraftK


class FullBackprop(DraftK):
    name = "full_backprop"

    def chain_length(self, config: MethodConfig, steps: int) -> int:
        return steps
