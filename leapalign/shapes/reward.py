"""The shapes world's differentiable reward: a per-cell classifier plus GenEval's rules made soft.

``CellNet`` reads each 8x8 cell of a picture and gives the probabilities of (nothing, square, circle,
triangle) and of the four colours. The reward of a prompt is the log-probability that the scene
satisfies it, treating cells as independent: e.g. "three triangles" is P(exactly 3 cells hold a
triangle) (a Poisson-binomial sum), "a square left of a circle" is P(some square cell lies in a column
left of some circle cell). It is differentiable in the pixels and 0 at best. It shares no code with
the rule-based judge (``judge``), so a model that fools the network without drawing the scene shows
up as a gap between reward and judge accuracy.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..rewards.base import Reward, load_error
from . import spec
from .prompts import Request, parse_prompt, relation_holds

EPS = 1e-6


class CellNet(nn.Module):
    """Linear(192 -> 64) - SiLU - Linear(64 -> 4 shape + 4 colour logits), shared by all cells."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.hidden = nn.Linear(3 * spec.CELL * spec.CELL, hidden)
        self.head = nn.Linear(hidden, 1 + len(spec.SHAPES) + len(spec.COLOURS))

    def forward(self, cells: Tensor) -> Tensor:
        return self.head(F.silu(self.hidden(cells)))


def cells_of(pictures: Tensor) -> Tensor:
    """``[B, 3, 32, 32]`` -> ``[B, 16, 192]`` cells in reading order, values in [-1, 1]."""
    if pictures.shape[-1] != spec.IMAGE_SIZE or pictures.shape[-2] != spec.IMAGE_SIZE:
        pictures = F.interpolate(pictures, size=(spec.IMAGE_SIZE, spec.IMAGE_SIZE), mode="area")
    cells = F.unfold(pictures * 2.0 - 1.0, spec.CELL, stride=spec.CELL)
    return cells.transpose(1, 2)


def cell_probabilities(net: nn.Module, pictures: Tensor) -> tuple[Tensor, Tensor]:
    """(shape probabilities ``[B, 16, 4]`` with 0 = nothing, colour probabilities ``[B, 16, 4]``)."""
    logits = net(cells_of(pictures)).float()
    shapes = 1 + len(spec.SHAPES)
    return logits[..., :shapes].softmax(-1), logits[..., shapes:].softmax(-1)


def _any(p: Tensor) -> Tensor:
    """P(at least one) of independent events with probabilities ``p`` (last dim)."""
    return 1.0 - (1.0 - p).clamp_min(0).prod(-1)


def count_distribution(p: Tensor) -> Tensor:
    """Poisson-binomial ``P(count = n)`` for ``n = 0..len(p)`` (a differentiable DP)."""
    dist = torch.ones(1, dtype=p.dtype, device=p.device)
    for q in p:
        dist = torch.cat([dist * (1 - q), torch.zeros(1, dtype=p.dtype, device=p.device)]) + \
            torch.cat([torch.zeros(1, dtype=p.dtype, device=p.device), dist * q])
    return dist


def _relation_mask(relation: str) -> Tensor:
    cells = [divmod(i, spec.GRID) for i in range(spec.GRID * spec.GRID)]
    return torch.tensor([[relation_holds(relation, a, b) for b in cells] for a in cells])


def satisfaction(req: Request, shape_p: Tensor, colour_p: Tensor) -> Tensor:
    """P(scene satisfies ``req``) from one picture's cell probabilities ``[16, 4]``, ``[16, 4]``."""
    def p_shape(name):
        return shape_p[:, 1 + spec.SHAPES.index(name)]

    def p_colour(name):
        return colour_p[:, spec.COLOUR_NAMES.index(name)]

    if req.category in ("single_object", "two_object"):
        return torch.stack([_any(p_shape(s)) for s in req.shapes]).prod()
    if req.category == "counting":
        return count_distribution(p_shape(req.shapes[0]))[req.count]
    if req.category == "colors":
        pa, pc = p_shape(req.shapes[0]), p_colour(req.colours[0])
        return _any(pa * pc) * (1.0 - pa * (1.0 - pc)).prod()
    if req.category == "position":
        mask = _relation_mask(req.relation).to(shape_p.device)
        pairs = p_shape(req.shapes[0])[:, None] * p_shape(req.shapes[1])[None, :]
        return _any(pairs[mask])
    return torch.stack([_any(p_shape(s) * p_colour(c)) for s, c in zip(req.shapes, req.colours)]).prod()


class ShapesReward(Reward):
    """log P(the picture satisfies the prompt) under :class:`CellNet`; 0 = certain."""

    name = "shapes-reward"
    scale = "log-probability that the scene satisfies the prompt: (-inf, 0]; log(0.5) = -0.69"
    default_lambda = math.log(0.9)

    def __init__(self, net: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net if net is not None else CellNet()
        self.freeze()

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        """A prompt outside the world's forms asks for "some object" (as a digit-less prompt does in the
        digits world): P(at least one cell holds a shape)."""
        shape_p, colour_p = cell_probabilities(self.net, self.as_model_input(images))
        probs = []
        for b, prompt in enumerate(prompts):
            try:
                probs.append(satisfaction(parse_prompt(prompt), shape_p[b], colour_p[b]))
            except ValueError:
                probs.append(_any(1.0 - shape_p[b, :, 0]))
        return torch.stack(probs).clamp_min(EPS).log()

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> ShapesReward:
        path = Path(path) if path is not None else spec.ASSETS_DIR / spec.REWARD_FILE
        if not path.is_file():
            raise load_error(cls.name, path, "the file does not exist",
                             "the file written by `python scripts/make_shapes_world.py`")
        net = CellNet()
        try:
            net.load_state_dict(load_file(str(path)))
        except RuntimeError as exc:
            raise load_error(cls.name, path, f"its tensors do not fit ({exc})", "a CellNet state dict") from None
        return cls(net)


def cell_training_batch(batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Synthetic cells ``[batch, 3, 8, 8]`` in [0, 1] with shape labels (0 = nothing) and colour labels.

    An object's amplitude is scaled by a random factor in [0.2, 1.3] (below 0.5 it is labelled
    nothing, as the judge would see it), blended with a second template and perturbed by Gaussian
    amplitude noise, so the network is smooth over the in-between pictures a sampler passes through.
    """
    from .codec import amplitudes_to_pixels

    n_shapes, n_colours = len(spec.SHAPES), len(spec.COLOURS)
    colours = torch.tensor(list(spec.COLOURS.values()))
    shape = torch.randint(0, n_shapes, (batch,), generator=generator)
    colour = torch.randint(0, n_colours, (batch,), generator=generator)
    factor = torch.rand(batch, generator=generator) * 1.1 + 0.2
    factor[torch.rand(batch, generator=generator) < 0.3] = 0.0
    amps = torch.zeros(batch, n_shapes, 3)
    amps[torch.arange(batch), shape] = colours[colour] * factor[:, None]
    other = torch.randint(0, n_shapes, (batch,), generator=generator)
    blend = torch.rand(batch, generator=generator) * 0.4 * (torch.rand(batch, generator=generator) < 0.5)
    amps[torch.arange(batch), other] += colours[colour] * (blend * factor)[:, None]
    amps[torch.arange(batch), shape] -= colours[colour] * (blend * factor)[:, None]
    amps += torch.randn(amps.shape, generator=generator) * torch.rand(batch, 1, 1, generator=generator) * 0.25
    pixels = amplitudes_to_pixels(amps.reshape(batch, n_shapes * 3, 1, 1))
    shape_label = torch.where(factor * (1 - blend) >= 0.5, shape + 1, torch.zeros_like(shape))
    return pixels.clamp(0, 1), shape_label, colour


def train_cell_net(steps: int, seed: int, batch: int = 256, lr: float = 3e-3) -> CellNet:
    """Deterministic CPU training of :class:`CellNet` on :func:`cell_training_batch` cells."""
    generator = torch.Generator().manual_seed(seed)
    net = CellNet()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / p.shape[-1]) ** 0.5 if p.ndim > 1
                    else torch.zeros(p.shape))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    shapes = 1 + len(spec.SHAPES)
    for _ in range(steps):
        pixels, shape_label, colour_label = cell_training_batch(batch, generator)
        logits = net(pixels.flatten(1) * 2.0 - 1.0)
        loss = F.cross_entropy(logits[:, :shapes], shape_label)
        has_object = shape_label > 0
        if has_object.any():
            loss = loss + F.cross_entropy(logits[has_object, shapes:], colour_label[has_object])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return net.eval().requires_grad_(False)
