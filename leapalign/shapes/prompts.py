"""Prompts in GenEval's six categories, what each asks for, and scenes that satisfy a prompt.

=================  ==============================================  ===============================
category           prompt                                           asks for
=================  ==============================================  ===============================
single_object      a photo of a circle                             >= 1 circle
two_object         a photo of a circle and a square                >= 1 of each
counting           a photo of three triangles                      exactly 3 triangles
colors             a photo of a blue circle                        circles, all of them blue
position           a photo of a square left of a circle            a square left of a circle
color_attr         a photo of a red square and a blue circle       a red square and a blue circle
=================  ==============================================  ===============================
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import torch

from . import spec
from .scenes import Obj, free_cells, pick

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS = {"two": 2, "three": 3, "four": 4}
RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class Request:
    """What a prompt asks for: ``shapes`` (and ``colours`` where named), ``count``, ``relation``."""

    category: str
    shapes: tuple[str, ...]
    colours: tuple[str | None, ...] = ()
    count: int | None = None
    relation: str | None = None


def all_prompts() -> list[str]:
    """The world's 126 prompts, in category order (training and evaluation use the same list)."""
    shapes, colours = spec.SHAPES, spec.COLOUR_NAMES
    out = [f"a photo of a {s}" for s in shapes]
    out += [f"a photo of a {a} and a {b}" for a, b in itertools.permutations(shapes, 2)]
    out += [f"a photo of {word} {s}s" for s in shapes for word in NUMBERS]
    out += [f"a photo of a {c} {s}" for s in shapes for c in colours]
    out += [f"a photo of a {a} {r} a {b}" for a, b in itertools.permutations(shapes, 2) for r in RELATIONS]
    out += [f"a photo of a {c1} {a} and a {c2} {b}" for a, b in itertools.permutations(shapes, 2)
            for c1, c2 in itertools.permutations(colours, 2)]
    return out


_SHAPE = "|".join(spec.SHAPES)
_COLOUR = "|".join(spec.COLOUR_NAMES)
_PATTERNS = [
    ("color_attr", re.compile(rf"a photo of an? ({_COLOUR}) ({_SHAPE}) and an? ({_COLOUR}) ({_SHAPE})")),
    ("position", re.compile(rf"a photo of an? ({_SHAPE}) ({'|'.join(RELATIONS)}) an? ({_SHAPE})")),
    ("two_object", re.compile(rf"a photo of an? ({_SHAPE}) and an? ({_SHAPE})")),
    ("counting", re.compile(rf"a photo of ({'|'.join(NUMBERS)}) ({_SHAPE})s")),
    ("colors", re.compile(rf"a photo of an? ({_COLOUR}) ({_SHAPE})")),
    ("single_object", re.compile(rf"a photo of an? ({_SHAPE})")),
]


def parse_prompt(prompt: str) -> Request:
    """The request a prompt makes; ``ValueError`` naming the accepted forms otherwise."""
    text = " ".join(str(prompt).lower().split())
    for category, pattern in _PATTERNS:
        m = pattern.fullmatch(text)
        if not m:
            continue
        g = m.groups()
        if category == "color_attr":
            return Request(category, (g[1], g[3]), (g[0], g[2]))
        if category == "position":
            return Request(category, (g[0], g[2]), relation=g[1])
        if category == "two_object":
            return Request(category, (g[0], g[1]))
        if category == "counting":
            return Request(category, (g[1],), count=NUMBERS[g[0]])
        if category == "colors":
            return Request(category, (g[1],), (g[0],))
        return Request(category, (g[0],))
    raise ValueError(f"prompt {prompt!r} is not one of the shapes world's forms, e.g. 'a photo of a circle', "
                     "'a photo of three squares', 'a photo of a red square and a blue circle', "
                     "'a photo of a square left of a circle'")


def category_of(prompt: str) -> str:
    return parse_prompt(prompt).category


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float], margin: float = 0.0) -> bool:
    """``a`` (row, col) stands in ``relation`` to ``b``, by more than ``margin`` along the relation's axis."""
    (ra, ca), (rb, cb) = a, b
    return {"left of": cb - ca, "right of": ca - cb, "above": rb - ra, "below": ra - rb}[relation] > margin


def scene_for(prompt: str, generator: torch.Generator) -> list[Obj]:
    """A random scene that satisfies ``prompt`` (colours not named are random)."""
    req = parse_prompt(prompt)
    colours = list(spec.COLOUR_NAMES)
    if req.category == "counting":
        cells = free_cells(generator, req.count)
        return [Obj(req.shapes[0], pick(colours, generator), r, c) for r, c in cells]
    if req.category == "position":
        while True:
            (ra, ca), (rb, cb) = free_cells(generator, 2)
            if relation_holds(req.relation, (ra, ca), (rb, cb)):
                break
        return [Obj(req.shapes[0], pick(colours, generator), ra, ca),
                Obj(req.shapes[1], pick(colours, generator), rb, cb)]
    cells = free_cells(generator, len(req.shapes))
    named = req.colours or (None,) * len(req.shapes)
    return [Obj(shape, colour or pick(colours, generator), r, c)
            for shape, colour, (r, c) in zip(req.shapes, named, cells)]
