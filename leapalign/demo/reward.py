"""The world's reward and judge as rewards of the project's interface (``leapalign.rewards.base.Reward``).

``DigitReward`` scores the log-probability the reward CNN gives the prompted digit: differentiable in
the pixels, 0 at best. A prompt naming several digits accepts any of them, one naming none accepts
every digit (the log-probability of the set; so "a handwritten digit" asks for a legible digit). ``DigitJudge`` is the same kind of object around the independent judge MLP; it
is meant for evaluation only (``accuracy``), but being a reward too, it can be plugged anywhere a
reward goes (e.g. to check how a judge-trained model fares on the reward net).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..rewards.base import Reward, load_error
from .classifiers import JudgeNet, RewardNet, classify
from .prompts import allowed_mask
from .spec import ASSETS_DIR, JUDGE_FILE, REWARD_FILE


class DigitClassifierReward(Reward):
    """Log-probability of the prompted digit under a frozen digit classifier."""

    scale = "log-probability of the prompted digit: (-inf, 0], 0 = certain; log(0.5) = -0.69"
    default_lambda = math.log(0.9)
    net_class: type[torch.nn.Module] = RewardNet

    def __init__(self, net: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.net = net if net is not None else self.net_class()
        self.freeze()

    def logits(self, images: Tensor) -> Tensor:
        return classify(self.net, self.as_model_input(images))

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        allowed = allowed_mask(prompts).to(images.device)
        log_probs = self.logits(images).float().log_softmax(dim=1)
        return log_probs.masked_fill(~allowed, float("-inf")).logsumexp(dim=1)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """The digit the classifier sees in each picture ``[B]``."""
        return self.logits(images.to(device=self.weight_device, dtype=torch.float32)).argmax(dim=1).to(images.device)

    @torch.no_grad()
    def correct(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """``[B]`` bools: does the classifier see a digit the prompt asks for?"""
        allowed = allowed_mask(prompts).to(images.device)
        return allowed.gather(1, self.predict(images)[:, None]).squeeze(1)

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> DigitClassifierReward:
        path = Path(path) if path is not None else ASSETS_DIR / cls.default_file
        if not path.is_file():
            raise load_error(cls.name, path, "the file does not exist",
                             "the file written by `python scripts/make_demo_world.py`")
        net = cls.net_class()
        try:
            net.load_state_dict(load_file(str(path)))
        except RuntimeError as exc:
            raise load_error(cls.name, path, f"its tensors do not fit ({exc})",
                             f"a {cls.net_class.__name__} state dict") from None
        return cls(net)


class DigitReward(DigitClassifierReward):
    """The training reward: the CNN trained on the ``reward`` split."""

    name = "digits-reward"
    net_class = RewardNet
    default_file = REWARD_FILE


class DigitJudge(DigitClassifierReward):
    """The evaluation judge: the MLP trained on the disjoint ``judge`` split."""

    name = "digits-judge"
    net_class = JudgeNet
    default_file = JUDGE_FILE
