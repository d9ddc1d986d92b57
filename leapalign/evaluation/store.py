"""The evaluation folder: every image and every score is written once, so a killed run resumes.

Layout: ``eval.json`` (what is evaluated: prompts, variants, seed, images per prompt, sampler
settings), ``images/<variant>/p<prompt>_s<sample>.png`` (each written atomically) and
``scores.jsonl``, one line per (variant, prompt, sample, metric), appended and fsynced as soon as
the score exists. A line cut short by a kill is dropped when the folder is opened again.

Several processes (one per GPU) share the folder: each evaluates its own prompts and appends to its
own ``scores.rank<r>.jsonl`` (rank 0: ``scores.jsonl``); every process reads all of them, so a resume
with another number of processes still skips whatever any of them wrote.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_write_bytes, atomic_write_text

PLAN_FILE = "eval.json"
SCORES_FILE = "scores.jsonl"
IMAGES_FOLDER = "images"

ScoreKey = tuple[str, int, int, str]  # (variant, prompt index, sample index, metric)


class EvalStoreError(ValueError):
    """The evaluation folder holds another evaluation, or a score would be written twice."""


def slug(text: str) -> str:
    """A variant label as a folder name (LoRA names hold slashes and dots)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "variant"


def png_bytes(image: Tensor) -> bytes:
    from PIL import Image

    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class EvalStore:
    def __init__(self, folder: str | os.PathLike, rank: int = 0) -> None:
        self.folder = Path(folder)
        self.rank = int(rank)
        self.scores: dict[ScoreKey, float] = {}

    @property
    def scores_path(self) -> Path:
        """This process's score file."""
        return self.folder / (SCORES_FILE if self.rank == 0 else f"scores.rank{self.rank}.jsonl")

    def score_files(self) -> list[Path]:
        return sorted(self.folder.glob("scores*.jsonl"))

    def open(self, plan: dict) -> EvalStore:
        """Create the folder, or check it holds this same evaluation and read the scores it has.

        The LoRAs compared may change between runs (the base, prompts, seeds and settings may not):
        scores of variants evaluated before are kept and reused.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        plan_path = self.folder / PLAN_FILE
        before = None
        if plan_path.exists():
            before = json.loads(plan_path.read_text(encoding="utf-8"))
            changed = sorted(k for k in set(before) | set(plan) if k != "variants" and before.get(k) != plan.get(k))
            if before.get("variants", [None])[:1] != plan.get("variants", [None])[:1]:
                changed.append("base variant")
            if changed:
                raise EvalStoreError(f"{self.folder} holds another evaluation (different {', '.join(changed)}); "
                                     "choose another output folder, or delete it to start over")
        if before != plan:  # new, or other LoRAs compared with the same base
            atomic_write_text(plan_path, json.dumps(plan, indent=2) + "\n")
        self.scores = self._read_scores()
        return self

    def reload(self) -> dict[ScoreKey, float]:
        """Read every process's scores again (after the others finished)."""
        self.scores = self._read_scores()
        return self.scores

    def _read_scores(self) -> dict[ScoreKey, float]:
        scores = {}
        for path in self.score_files():
            data = path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]
            if len(complete) != len(data) and path == self.scores_path:
                with open(path, "r+b") as handle:  # our own last line was cut short by a kill: drop it
                    handle.truncate(len(complete))
            for line in complete.decode("utf-8").splitlines():  # another process's unfinished line is skipped
                record = json.loads(line)
                scores[(record["variant"], record["prompt_index"], record["sample"], record["metric"])] = record["value"]
        return scores

    def image_path(self, variant: str, prompt_index: int, sample: int) -> Path:
        return self.folder / IMAGES_FOLDER / slug(variant) / f"p{prompt_index:04d}_s{sample:02d}.png"

    def has_image(self, variant: str, prompt_index: int, sample: int) -> bool:
        return self.image_path(variant, prompt_index, sample).is_file()

    def write_image(self, variant: str, prompt_index: int, sample: int, image: Tensor) -> Path:
        path = self.image_path(variant, prompt_index, sample)
        if path.exists():
            raise EvalStoreError(f"{path} exists; images are written once")
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_bytes(path, png_bytes(image))

    def add_score(self, key: ScoreKey, prompt: str, value: float) -> None:
        """Append one score line and make it durable before going on."""
        if key in self.scores:
            raise EvalStoreError(f"score {key} exists; scores are written once")
        variant, prompt_index, sample, metric = key
        line = json.dumps({"variant": variant, "prompt_index": prompt_index, "sample": sample, "metric": metric,
                           "prompt": prompt, "value": float(value)})
        with open(self.scores_path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.scores[key] = float(value)

    def load_image(self, variant: str, prompt_index: int, sample: int) -> Tensor:
        from PIL import Image

        with Image.open(self.image_path(variant, prompt_index, sample)) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)
