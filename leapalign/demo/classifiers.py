"""Two digit classifiers of different design, trained on disjoint data.

* ``RewardNet``: a small CNN on the 8x8 digit, trained on the ``reward`` split. Its
  log-probability of the prompted digit is the differentiable reward the aligner climbs.
* ``JudgeNet``: an MLP on the 8x8 digit, trained on the ``judge`` split, used only to
  evaluate. If training fools the reward net without drawing better digits, the judge shows it.

Both read what the VAE decoder returns: RGB pictures ``[B, 3, H, W]`` in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .digits import DigitsData


def to_gray(images: Tensor, size: int) -> Tensor:
    """RGB pictures in [0, 1] -> grayscale ``[B, 1, size, size]`` in [-1, 1] (area downsampling)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected pictures [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
    gray = images.mean(dim=1, keepdim=True) * 2.0 - 1.0
    if gray.shape[-1] != size or gray.shape[-2] != size:
        gray = F.adaptive_avg_pool2d(gray, size)
    return gray


class RewardNet(nn.Module):
    """Conv(1->16) - pool - Conv(16->32) - pool - Linear(128->10), on 8x8."""

    input_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32 * 2 * 2, 10)

    def forward(self, gray: Tensor) -> Tensor:
        h = F.avg_pool2d(F.silu(self.conv1(gray)), 2)
        h = F.avg_pool2d(F.silu(self.conv2(h)), 2)
        return self.head(h.flatten(1))


class JudgeNet(nn.Module):
    """Linear(64->128) - ReLU - Linear(128->10), on 8x8."""

    input_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 128)
        self.head = nn.Linear(128, 10)

    def forward(self, gray: Tensor) -> Tensor:
        return self.head(F.relu(self.hidden(gray.flatten(1))))


def classify(net: nn.Module, images: Tensor) -> Tensor:
    """Logits ``[B, 10]`` for RGB pictures in [0, 1] of any square size."""
    return net(to_gray(images, net.input_size))


def augment(gray: Tensor, generator: torch.Generator, shift: int = 1, noise: float = 0.15) -> Tensor:
    """Random translation by up to ``shift`` pixels (paper-filled) plus Gaussian pixel noise."""
    b, _, h, w = gray.shape
    padded = F.pad(gray, (shift, shift, shift, shift), value=1.0)
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, :, None].expand(b, h, w)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, :].expand(b, h, w)
    shifted = padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)
    return shifted + noise * torch.randn(shifted.shape, generator=generator)


def train_classifier(net: nn.Module, data: DigitsData, *, steps: int, seed: int, batch: int = 128,
                     lr: float = 3e-3, shift: int = 1, noise: float = 0.15) -> nn.Module:
    """Deterministic CPU training (seeded init, batches and augmentation) with AdamW."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            else:
                p.zero_()
    gray = F.adaptive_avg_pool2d(data.images, net.input_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=generator)
        x = augment(gray[idx], generator, shift=shift, noise=noise)
        loss = F.cross_entropy(net(x), data.labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(net: nn.Module, data: DigitsData) -> float:
    """Accuracy on clean digits (``data.images`` are 8x8 in [-1, 1])."""
    logits = net(F.adaptive_avg_pool2d(data.images, net.input_size))
    return float((logits.argmax(1) == data.labels).float().mean())
