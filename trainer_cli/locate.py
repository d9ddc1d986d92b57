"""Find a ComfyUI install and check that it really is one.

Order of precedence: an explicit path (``--comfyui``), ``COMFYUI_PATH``, comfy-cli's default
workspace, then the pinned development copy that ``scripts/setup.sh`` unpacks into ``.comfyui/``.
An explicit choice that is wrong is an error, never a silent fall-through to the next source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PINNED_COMFYUI = REPO_ROOT / ".comfyui"
# What makes a folder a ComfyUI checkout for our purposes: the executor, the node registry and the model code.
REQUIRED_ENTRIES = ("nodes.py", "execution.py", "folder_paths.py", "comfy/model_management.py")


class ComfyUINotFound(RuntimeError):
    """Raised with a one-line, actionable message when no usable ComfyUI is found."""


@dataclass(frozen=True)
class ComfyUIInstall:
    path: Path
    source: str  # "--comfyui", "COMFYUI_PATH", "comfy-cli workspace" or "pinned dev copy"

    @property
    def version(self) -> str:
        version_file = self.path / "comfyui_version.py"
        if version_file.is_file():
            for line in version_file.read_text(encoding="utf-8").splitlines():
                if line.startswith("__version__"):
                    return line.split("=", 1)[1].strip().strip("\"'")
        return "unknown"


def missing_entries(path: Path) -> list[str]:
    return [entry for entry in REQUIRED_ENTRIES if not (path / entry).is_file()]


def _check(path: Path, source: str) -> ComfyUIInstall:
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise ComfyUINotFound(
            f"ComfyUI not found: {source} points at {path}, which is not a folder. "
            f"Point {source} at your ComfyUI folder (the one with main.py), or unset it to use the pinned copy from `make setup`."
        )
    missing = missing_entries(path)
    if missing:
        raise ComfyUINotFound(
            f"ComfyUI not found: {source} points at {path}, which is not a ComfyUI folder "
            f"(missing {', '.join(missing)}). Point {source} at your ComfyUI folder (the one with main.py)."
        )
    return ComfyUIInstall(path, source)


def _comfy_cli_workspace() -> Path | None:
    """comfy-cli's configured default workspace, read from its config file without side effects."""
    try:
        from comfy_cli.config_manager import ConfigManager  # noqa: PLC0415
    except Exception:  # comfy-cli missing or broken: not a source, not an error
        return None
    try:
        value = ConfigManager().get("default_workspace")
    except Exception:
        return None
    return Path(value) if value else None


def locate_comfyui(explicit: str | os.PathLike | None = None) -> ComfyUIInstall:
    if explicit:
        return _check(Path(explicit), "--comfyui")
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return _check(Path(env), "COMFYUI_PATH")
    workspace = _comfy_cli_workspace()
    if workspace is not None and workspace.is_dir() and not missing_entries(workspace):
        return ComfyUIInstall(workspace.resolve(), "comfy-cli workspace")
    if PINNED_COMFYUI.is_dir() and not missing_entries(PINNED_COMFYUI):
        return ComfyUIInstall(PINNED_COMFYUI, "pinned dev copy")
    raise ComfyUINotFound(
        "ComfyUI not found: looked at --comfyui, COMFYUI_PATH, comfy-cli's default workspace and the pinned copy "
        f"in {PINNED_COMFYUI}. Pass --comfyui PATH, set COMFYUI_PATH, or run `make setup` to unpack the pinned ComfyUI."
    )
