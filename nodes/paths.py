"""Resolve user-given file names inside the ComfyUI folder they belong to (never outside it)."""

from __future__ import annotations

from pathlib import Path


def resolve_inside(base: str | Path, name: str, what: str) -> Path:
    """``base/name``, refusing absolute paths and ``..`` escapes from ``base``."""
    base_path = Path(base).resolve()
    candidate = (base_path / name).resolve()
    if not name or Path(name).is_absolute() or base_path not in (candidate, *candidate.parents):
        raise ValueError(f"{what} {name!r} must be a path inside {base_path}; put the file there and give its relative name")
    return candidate


def input_file(name: str, what: str) -> Path:
    """A file in ComfyUI's input folder (where users drop prompt lists and images)."""
    import folder_paths  # ComfyUI's module; only importable inside a running ComfyUI

    return resolve_inside(folder_paths.get_input_directory(), name, what)
