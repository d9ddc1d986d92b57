"""The files of one run folder besides checkpoints: what counts as results, and metrics.jsonl on resume.

A run folder (``<output>/leapalign/<run_name>/``) belongs to one run. A fresh run may only start in a
folder without results of an earlier one; a resumed run continues the metrics exactly after its
checkpoint's step, so every step appears once.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_write_text
from .checkpoint import list_checkpoints

METRICS_FILE = "metrics.jsonl"
STOP_ENV = "LEAPALIGN_STOP_REQUESTED"
"""Set to ``1`` by the headless trainer when a stop is requested (Ctrl-C, SIGTERM): the training node
stops at the next step boundary with a checkpoint. An environment variable because the CLI and the
node import this package under different module names (ComfyUI loads the pack by its folder path)."""


def existing_results(folder: str | Path) -> list[Path]:
    """Checkpoints and a non-empty metrics.jsonl of an earlier run in ``folder``."""
    folder = Path(folder)
    found = list_checkpoints(folder)
    metrics = folder / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(metrics)
    return found


def trim_metrics(path: str | Path, step: int) -> int:
    """Keep the complete records of steps ``<= step``; drop later ones and torn lines. Lines removed.

    The file is rewritten atomically and only when something changes.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        try:
            record = json.loads(line) if line.endswith("\n") else None
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(kept))
    return dropped
