"""The judge: an exact, rule-based scene parser (no network), scoring each prompt category as GenEval does.

Parsing a picture ``[3, H, W]`` in [0, 1]:
1. *colour segmentation*: a pixel is foreground when its brightest channel exceeds 0.5;
2. *connected components* of the foreground (4-neighbourhood); components under ``MIN_AREA`` pixels
   are specks and ignored;
3. *colour* of a component: its mean RGB, each channel thresholded at 0.5 (red, green, blue, yellow;
   any other combination is ``"other"``);
4. *shape from geometry*: fill = area / bounding-box area; a box outside 4..7 pixels a side is
   ``"unknown"`` (a fragment or merged objects); fill >= 0.85 is a square; otherwise the pixel count
   of the box's top half over its bottom half tells a triangle (< 0.7, apex up) from a circle.

Scoring (``judge_prompt``), per GenEval: single object: the shape is there; two objects: both are;
counting: exactly that many; colours: the shape is there and every one of it has the colour; position:
some A stands in the relation to some B by more than ``POSITION_MARGIN`` pixels between centres;
colour attribution: an A of the first colour and a B of the second.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import spec
from .prompts import parse_prompt, relation_holds

MIN_AREA = 8
POSITION_MARGIN = 2.0
_COLOUR_PATTERNS = {tuple(int(v) for v in rgb): name for name, rgb in spec.COLOURS.items()}


@dataclass(frozen=True)
class Detection:
    shape: str        # square / circle / triangle / unknown
    colour: str       # red / green / blue / yellow / other
    row: float        # centroid, pixels
    col: float
    area: int


def components(mask: np.ndarray) -> list[np.ndarray]:
    """Pixel coordinates ``[n, 2]`` of each 4-connected component of a boolean mask."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    out = []
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        queue, pixels = deque([(r0, c0)]), []
        while queue:
            r, c = queue.popleft()
            pixels.append((r, c))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
        out.append(np.array(pixels))
    return out


def classify_shape(pixels: np.ndarray) -> str:
    rows, cols = pixels[:, 0], pixels[:, 1]
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    if not (4 <= height <= 7 and 4 <= width <= 7):
        return "unknown"
    fill = len(pixels) / (height * width)
    if fill >= 0.85:
        return "square"
    if fill < 0.45:
        return "unknown"
    middle = rows.min() + height / 2
    top, bottom = int((rows < middle - 0.25).sum()), int((rows > middle - 0.25).sum())
    return "triangle" if top < 0.7 * bottom else "circle"


def parse_picture(picture: Tensor) -> list[Detection]:
    """The objects in one picture ``[3, H, W]`` in [0, 1], in reading order of their first pixel."""
    if picture.ndim != 3 or picture.shape[0] != 3:
        raise ValueError(f"the judge parses one picture [3, H, W] in [0, 1], got shape {tuple(picture.shape)}")
    rgb = picture.detach().float().cpu().numpy()
    found = []
    for pixels in components(rgb.max(axis=0) > 0.5):
        if len(pixels) < MIN_AREA:
            continue
        mean = rgb[:, pixels[:, 0], pixels[:, 1]].mean(axis=1)
        colour = _COLOUR_PATTERNS.get(tuple(int(v > 0.5) for v in mean), "other")
        found.append(Detection(classify_shape(pixels), colour, float(pixels[:, 0].mean()),
                               float(pixels[:, 1].mean()), len(pixels)))
    return found


def judge_prompt(prompt: str, detections: list[Detection]) -> bool:
    """Does a parsed picture satisfy ``prompt``? (GenEval's rule for the prompt's category.)"""
    req = parse_prompt(prompt)
    of = {s: [d for d in detections if d.shape == s] for s in spec.SHAPES}
    if req.category in ("single_object", "two_object"):
        return all(of[s] for s in req.shapes)
    if req.category == "counting":
        return len(of[req.shapes[0]]) == req.count
    if req.category == "colors":
        group = of[req.shapes[0]]
        return bool(group) and all(d.colour == req.colours[0] for d in group)
    if req.category == "position":
        return any(relation_holds(req.relation, (a.row, a.col), (b.row, b.col), POSITION_MARGIN)
                   for a in of[req.shapes[0]] for b in of[req.shapes[1]])
    return all(any(d.colour == c for d in of[s]) for s, c in zip(req.shapes, req.colours))


@torch.no_grad()
def judge(pictures: Tensor, prompts: list[str]) -> Tensor:
    """``[B]`` bools for pictures ``[B, 3, H, W]`` in [0, 1], one prompt each."""
    if pictures.shape[0] != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts for {pictures.shape[0]} pictures")
    return torch.tensor([judge_prompt(p, parse_picture(x)) for x, p in zip(pictures, prompts)], dtype=torch.bool)
