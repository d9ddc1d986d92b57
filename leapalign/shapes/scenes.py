"""Scenes (objects on a 4x4 grid of cells), the three shape templates, and rendering to pictures.

A scene is a list of objects ``(shape, colour, row, col)``, at most one per cell. The templates are
6x6 masks inside an 8x8 cell (a 1-pixel margin keeps neighbouring objects apart, so connected
components separate them): a full square (36 px), a disc of radius 2.9 (24 px) and an upward
triangle (24 px). Square vs the others is told by fill, circle vs triangle by top/bottom balance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import spec


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    row: int
    col: int

    def __post_init__(self):
        if self.shape not in spec.SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; the world has {', '.join(spec.SHAPES)}")
        if self.colour not in spec.COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; the world has {', '.join(spec.COLOURS)}")
        if not (0 <= self.row < spec.GRID and 0 <= self.col < spec.GRID):
            raise ValueError(f"cell ({self.row}, {self.col}) is outside the {spec.GRID}x{spec.GRID} grid")


def template_masks() -> Tensor:
    """``[3, 8, 8]`` float masks (square, circle, triangle), each 6x6 with a 1-pixel margin."""
    masks = torch.zeros(len(spec.SHAPES), spec.CELL, spec.CELL)
    y, x = torch.meshgrid(torch.arange(spec.OBJECT, dtype=torch.float64),
                          torch.arange(spec.OBJECT, dtype=torch.float64), indexing="ij")
    centre = (spec.OBJECT - 1) / 2
    shapes = {
        "square": torch.ones_like(x, dtype=torch.bool),
        "circle": (x - centre) ** 2 + (y - centre) ** 2 <= 2.9 ** 2,
        "triangle": (x - centre).abs() <= (y + 1) / 2,
    }
    for i, name in enumerate(spec.SHAPES):
        masks[i, 1:1 + spec.OBJECT, 1:1 + spec.OBJECT] = shapes[name].float()
    return masks


def scene_amplitudes(objects: list[Obj]) -> Tensor:
    """``[9, 4, 4]`` codec amplitudes of a scene (1 where a shape is drawn in a colour channel)."""
    amps = torch.zeros(spec.USED_CHANNELS, spec.GRID, spec.GRID)
    cells = set()
    for obj in objects:
        if (obj.row, obj.col) in cells:
            raise ValueError(f"two objects in cell ({obj.row}, {obj.col}); a cell holds at most one")
        cells.add((obj.row, obj.col))
        s = spec.SHAPES.index(obj.shape)
        for c, value in enumerate(spec.COLOURS[obj.colour]):
            amps[s * 3 + c, obj.row, obj.col] = value
    return amps


def render(objects: list[Obj]) -> Tensor:
    """A scene as a picture ``[3, 32, 32]`` in [0, 1] (black background)."""
    from .codec import amplitudes_to_pixels

    return amplitudes_to_pixels(scene_amplitudes(objects)[None])[0]


def free_cells(generator: torch.Generator, count: int) -> list[tuple[int, int]]:
    order = torch.randperm(spec.GRID * spec.GRID, generator=generator)[:count].tolist()
    return [divmod(i, spec.GRID) for i in order]


def pick(options, generator: torch.Generator):
    return options[int(torch.randint(0, len(options), (1,), generator=generator))]
