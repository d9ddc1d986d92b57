"""The run folder of ``leapalign-comfy train`` (``--output DIR``).

Layout::

    DIR/leapalign/<name>_00001_.safetensors   what Save LoRA writes (DIR is ComfyUI's loras folder)
    DIR/leapalign/<run_name>/                 the training node's checkpoints and metrics.jsonl
    DIR/leapalign/<run_name>/tensorboard/     the metrics as TensorBoard scalars (if installed)
    DIR/workflow.api.json                     the exact graph that ran (after --set)
    DIR/logs/                                 ComfyUI's own log, one file per rank

DIR is ComfyUI's output folder for the run, so image savers in the graph write there too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from leapalign.runlock import LOCK_NAME

from .errors import CLIError

EFFECTIVE_WORKFLOW = "workflow.api.json"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def workflow(self) -> Path:
        return self.path / EFFECTIVE_WORKFLOW

    def log_file(self, rank: int, world_size: int) -> Path:
        return self.path / "logs" / ("comfyui.log" if world_size == 1 else f"comfyui-rank{rank}.log")

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CLIError(f"cannot create the output folder {self.path}: {exc.strerror}") from None
        if not os.access(self.path, os.W_OK):
            raise CLIError(f"the output folder {self.path} is not writable")


    def remove_if_unused(self) -> None:
        """Undo :meth:`create` after a refusal: remove the folder if it holds nothing but this run's logs."""
        logs = self.path / "logs"
        if not self.path.is_dir() or any(p.name not in ("logs", LOCK_NAME) for p in self.path.iterdir()):
            return
        if logs.is_dir():
            if any(not p.name.startswith("comfyui") for p in logs.iterdir()):
                return
            for path in logs.iterdir():
                path.unlink(missing_ok=True)
            logs.rmdir()
        (self.path / LOCK_NAME).unlink(missing_ok=True)  # released already; the folder was this run's alone
        self.path.rmdir()


def default_output(workflow: Path) -> Path:
    return Path("runs") / workflow.stem
