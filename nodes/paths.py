"""Resolve user-given file names inside the ComfyUI folder they belong to (never outside it).

The check is lexical, like ComfyUI's own savers (``folder_paths.get_save_image_path``): absolute names
and ``..`` escapes are refused, but links inside the folder are followed as the user made them. So a
``models/loras/shared -> /mnt/loras`` link works, and so does the headless trainer's per-rank scratch
folder, whose ``leapalign/`` entry links to the run folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def resolve_inside(base: str | Path, name: str, what: str) -> Path:
    """``base/name`` (absolute, normalised), refusing empty and absolute names and ``..`` escapes from ``base``."""
    base_path = Path(os.path.abspath(base))
    candidate = Path(os.path.normpath(base_path / name)) if name else base_path
    if not name or Path(name).is_absolute() or base_path not in (candidate, *candidate.parents):
        raise ValueError(f"{what} {name!r} must be a path inside {base_path}; put the file there and give its relative name")
    return candidate


def name_problem(base: str | Path, name, what: str, allow_empty: bool = False) -> str | bool:
    """For ``VALIDATE_INPUTS``: True if ``name`` is fine inside ``base``, else the reason.

    A value that is not a string (an input fed by a link, unknown before the graph runs) passes here
    and is checked when the node runs.
    """
    if not isinstance(name, str) or (allow_empty and not name.strip()):
        return True
    try:
        resolve_inside(base, name.strip().replace("\\", "/"), what)
    except ValueError as exc:
        return str(exc)
    return True


def input_file(name: str, what: str) -> Path:
    """A file in ComfyUI's input folder (where users drop prompt lists and images)."""
    import folder_paths  # ComfyUI's module; only importable inside a running ComfyUI

    return resolve_inside(folder_paths.get_input_directory(), name, what)
