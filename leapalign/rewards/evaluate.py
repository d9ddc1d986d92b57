"""Score images outside training: a batch or a folder of image files, into a table or CSV.

Prompts for a folder come, per image, from a sidecar ``<stem>.txt`` if one exists, else from the
given prompt list (one prompt for all images, or one per image in file-name order).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_write_text
from .base import Reward

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class ScoreRow:
    image: str
    prompt: str
    score: float


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"image folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def load_image(path: str | Path) -> Tensor:
    """An image file as ``[3, H, W]`` float32 in [0, 1] (RGB)."""
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def prompts_for_images(paths: Sequence[Path], prompts: Sequence[str]) -> list[str]:
    prompts = list(prompts)
    if len(prompts) not in (0, 1, len(paths)):
        raise ValueError(f"got {len(prompts)} prompts for {len(paths)} images; give one for all, one per image, "
                         "or a <image name>.txt file next to each image")
    chosen = []
    for index, path in enumerate(paths):
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            chosen.append(sidecar.read_text(encoding="utf-8").strip())
        elif prompts:
            chosen.append(prompts[0] if len(prompts) == 1 else prompts[index])
        else:
            raise ValueError(f"no prompt for {path.name}: give prompts or put {sidecar.name} next to it")
    return chosen


def score_batch(reward: Reward, images: Tensor, prompts: Sequence[str], batch_size: int = 8) -> list[float]:
    """Scores of an image batch ``[B, 3, H, W]`` in [0, 1], evaluated without gradients in chunks."""
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            chunk_prompts = list(prompts[start:start + batch_size]) if len(prompts) > 1 else list(prompts)
            scores.extend(reward(images[start:start + batch_size], chunk_prompts).tolist())
    return scores


def score_folder(reward: Reward, folder: str | Path, prompts: Sequence[str] = ()) -> list[ScoreRow]:
    """Score every image in ``folder`` (images of any size; each is scored on its own)."""
    paths = list_images(folder)
    chosen = prompts_for_images(paths, prompts)
    rows = []
    with torch.no_grad():
        for path, prompt in zip(paths, chosen):
            score = reward(load_image(path).unsqueeze(0), [prompt])
            rows.append(ScoreRow(path.name, prompt, float(score[0])))
    return rows


def format_table(rows: Sequence[ScoreRow], reward_name: str) -> str:
    """A plain-text table with a mean line, for a ComfyUI text display or a console."""
    width = max([len(r.image) for r in rows] + [5])
    lines = [f"{'image':<{width}}  {reward_name:>12}  prompt"]
    lines += [f"{r.image:<{width}}  {r.score:>12.5f}  {r.prompt}" for r in rows]
    if rows:
        mean = sum(r.score for r in rows) / len(rows)
        lines.append(f"{'mean':<{width}}  {mean:>12.5f}  ({len(rows)} images)")
    return "\n".join(lines)


def scores_csv(rows: Sequence[ScoreRow], reward_name: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "prompt", reward_name])
    writer.writerows([r.image, r.prompt, f"{r.score:.6f}"] for r in rows)
    return buffer.getvalue()


def write_scores_csv(path: str | Path, rows: Sequence[ScoreRow], reward_name: str) -> Path:
    """Write the CSV atomically (temp file + rename)."""
    return atomic_write_text(path, scores_csv(rows, reward_name))
