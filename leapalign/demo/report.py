"""Pictures for people: a before/after sample grid labelled with its prompts, and the text report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .evaluate import DigitsScore

CELL = 64
PAD = 4
LABEL_WIDTH = 190
HEADER = 28


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def _tile(picture: Tensor) -> Image.Image:
    """``[3, H, W]`` in [0, 1] -> a CELL x CELL RGB tile (nearest upscaling keeps the pixels honest)."""
    array = (picture.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array).resize((CELL, CELL), Image.NEAREST)


def sample_grid(columns: Sequence[tuple[str, Tensor]], prompts: Sequence[str],
                correct: Sequence[Tensor] | None = None) -> Image.Image:
    """One row per prompt; column groups ``(title, pictures [rows, cols, 3, H, W])`` side by side.

    ``correct`` (one ``[rows, cols]`` bool tensor per group) draws a green or red frame around each
    picture: whether the judge sees the prompted digit.
    """
    rows = len(prompts)
    groups = [(title, pics) for title, pics in columns]
    for title, pics in groups:
        if pics.shape[0] != rows:
            raise ValueError(f"column group {title!r} has {pics.shape[0]} rows for {rows} prompts")
    group_widths = [pics.shape[1] * (CELL + PAD) for _, pics in groups]
    width = LABEL_WIDTH + sum(group_widths) + PAD * 3 * (len(groups) - 1) + PAD
    height = HEADER + rows * (CELL + PAD) + PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(16)
    x0 = LABEL_WIDTH
    for g, ((title, pics), group_width) in enumerate(zip(groups, group_widths)):
        draw.text((x0 + group_width // 2, HEADER // 2), title, fill="black", font=font, anchor="mm")
        for r in range(rows):
            for c in range(pics.shape[1]):
                x, y = x0 + c * (CELL + PAD), HEADER + r * (CELL + PAD)
                canvas.paste(_tile(pics[r, c]), (x, y))
                if correct is not None:
                    ok = bool(correct[g][r, c])
                    draw.rectangle((x - 2, y - 2, x + CELL + 1, y + CELL + 1), outline=(0, 150, 0) if ok else (210, 0, 0),
                                   width=2)
        x0 += group_width + PAD * 3
    for r, prompt in enumerate(prompts):
        draw.text((PAD, HEADER + r * (CELL + PAD) + CELL // 2), prompt, fill="black", font=font, anchor="lm")
    return canvas


SCORE_ROWS = (("judge accuracy", "judge_accuracy", True), ("reward-net accuracy", "reward_accuracy", True),
              ("mean reward (log p)", "mean_reward", False))


def format_scores(before: DigitsScore, after: DigitsScore | None = None) -> list[str]:
    """A small fixed-width table: judge accuracy, reward-net accuracy, mean reward; before, after, change."""
    head = f"{'':22}{'before':>10}" + (f"{'after':>10}{'change':>10}" if after else "")
    lines = [head]
    for label, key, percent in SCORE_ROWS:
        b = getattr(before, key)
        cell = (lambda v: f"{100 * v:9.1f}%") if percent else (lambda v: f"{v:10.3f}")
        line = f"{label:22}{cell(b)}"
        if after is not None:
            a = getattr(after, key)
            delta = f"{100 * (a - b):+8.1f}pt" if percent else f"{a - b:+10.3f}"
            line += f"{cell(a)}{delta}"
        lines.append(line)
    return lines


def markdown_scores(before: DigitsScore, after: DigitsScore | None = None) -> str:
    """The same table in Markdown, which the editor's stock "Preview as Text" node renders as a table."""
    lines = ["| | before | after | change |" if after else "| | score |", "|---|---|---|---|" if after else "|---|---|"]
    for label, key, percent in SCORE_ROWS:
        b = getattr(before, key)
        cell = (lambda v: f"{100 * v:.1f}%") if percent else (lambda v: f"{v:.3f}")
        row = f"| {label} | {cell(b)} |"
        if after is not None:
            a = getattr(after, key)
            row += f" {cell(a)} | {f'{100 * (a - b):+.1f}pt' if percent else f'{a - b:+.3f}'} |"
        lines.append(row)
    return "\n".join(lines) + "\n"
