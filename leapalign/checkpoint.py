"""Whole-state training checkpoints: atomic writes, ``weights_only`` loads, RNG states as tensors.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values, so it loads
with ``torch.load(weights_only=True)`` (a file that needs arbitrary unpickling is refused). Writes
go to a temp file in the same folder, are fsynced, then ``os.replace``d over the target: a write
interrupted at any point leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import pickle
import random
import re
from pathlib import Path

import torch

from .atomic import atomic_write

FORMAT = "leapalign-train-checkpoint"
VERSION = 1
RUNS_FOLDER = "leapalign"
"""The folder, under an output directory, where the training node keeps one sub-folder per run."""
_NAME = re.compile(r"^checkpoint-(\d{8})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unsafe, from another format, or does not fit the parameters."""


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}.pt"


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` through :func:`leapalign.atomic.atomic_write` (temp file, fsync, rename)."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def safe_load(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` with clear errors; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refusing to load {path}: it is not a plain tensor checkpoint "
                              f"(weights_only load failed: {str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a LeapAlign training checkpoint (format tag missing)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}, this code reads {VERSION}")
    return state


def rng_state() -> dict:
    """torch (CPU and CUDA), Python ``random`` and numpy RNG states as tensors and plain values."""
    version, mt, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)}
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["mt"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np
        npst = state["numpy"]
        np.random.set_state((npst["kind"], npst["keys"].numpy().astype("uint32"), npst["pos"],
                             npst["has_gauss"], npst["cached"]))


def checkpoint_step(path: str | Path) -> int | None:
    """The step in a checkpoint's file name, or None if the name is not a checkpoint's."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (temp files of interrupted writes are skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = sorted((step, p) for p in folder.iterdir() if (step := checkpoint_step(p)) is not None)
    return [p for _, p in found]


def find_latest(folder: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``folder`` (temp files are ignored)."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def newest_readable(folder: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint in ``folder`` that loads, and a warning for each newer one that does not.

    A checkpoint is written atomically, so an unreadable one was damaged later (a disk, a copy); the
    run continues from the one before it rather than not at all.
    """
    warnings: list[str] = []
    found = list_checkpoints(folder)
    for index in range(len(found) - 1, -1, -1):
        try:
            safe_load(found[index])
        except CheckpointError as exc:
            older = found[index - 1].name if index else None
            warnings.append(f"checkpoint {found[index]} is unreadable ({exc}); "
                            + (f"using the one before it, {older}" if older else "no older checkpoint to use"))
            continue
        return found[index], warnings
    return None, warnings


def resolve_resume(resume: str | Path) -> Path:
    """A checkpoint file, or a folder whose newest readable checkpoint is taken (see :func:`newest_readable`)."""
    path = Path(resume)
    if path.is_dir():
        latest, warnings = newest_readable(path)
        for warning in warnings:
            logging.getLogger("leapalign").warning(warning)
        if latest is None:
            raise CheckpointError(f"no readable checkpoint-*.pt file in {path}"
                                  + (f" ({'; '.join(warnings)})" if warnings else ""))
        return latest
    return path


def prune(folder: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints in ``folder``."""
    for path in list_checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)
