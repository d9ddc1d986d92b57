"""A weighted sum of rewards (MixGRPO-style multi-reward training)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .base import Reward


class WeightedSumReward(Reward):
    """``sum_i w_i * r_i(images, prompts)``.

    Each part keeps its own scale, so weights also convert units (e.g. PickScore ~22 vs HPS ~0.3).
    ``default_lambda`` is the same weighted sum of the parts' defaults, so the hinge sits where it
    would for every part at once.
    """

    def __init__(self, rewards: Sequence[Reward], weights: Sequence[float]):
        super().__init__()
        if not rewards or len(rewards) != len(weights):
            raise ValueError(f"weighted sum: need one weight per reward, got {len(rewards)} rewards and {len(weights)} weights")
        self.parts = nn.ModuleList(rewards)
        self.weights = [float(w) for w in weights]
        self.name = " + ".join(f"{w:g}*{r.name}" for r, w in zip(rewards, self.weights))
        self.scale = "weighted sum of: " + "; ".join(f"{r.name}: {r.scale}" for r in rewards)
        self.default_lambda = sum(w * r.default_lambda for r, w in zip(rewards, self.weights))

    def forward(self, images: Tensor, prompts) -> Tensor:
        # Each part applies its own device/dtype policy and returns float32 on the images' device.
        total = None
        for reward, weight in zip(self.parts, self.weights):
            term = weight * reward(images, prompts)
            total = term if total is None else total + term
        return total

    def parts_scores(self, images: Tensor, prompts) -> dict[str, Tensor]:
        """Each part's own score, for logging next to the combined one."""
        return {reward.name: reward(images, prompts) for reward in self.parts}
