"""What the CLI knows about the pack's training node: where it keeps a run, and how to resume it.

The training nodes (``LeapAlignTrain``, and ``LeapAlignTrainLoRA`` of workflows saved before the
method/optimizer/LoRA blocks) keep checkpoints (``checkpoint-XXXXXXXX.pt``) and ``metrics.jsonl`` in
``<ComfyUI output>/leapalign/<run_name>/`` and continues from the latest checkpoint there when its
``resume`` input is true. The CLI makes ``--output DIR`` ComfyUI's output folder, so a run's state
lands in ``DIR/leapalign/<run_name>/``; ``--resume`` switches the node's ``resume`` input on.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from leapalign.atomic import atomic_write
from leapalign.checkpoint import (
    RUNS_FOLDER,
    CheckpointError,
    checkpoint_step,
    list_checkpoints,
    newest_readable,
    safe_load,
)
from leapalign.run_files import METRICS_FILE, existing_results, trim_metrics

from .errors import CLIError
from .workflow import node_label, sorted_node_ids

TRAIN_NODES = ("LeapAlignTrain", "LeapAlignTrainLoRA")
"""Node types that train (same run_name / resume / steps inputs)."""
TRAIN_NODE = TRAIN_NODES[0]
METHOD_BLOCKS = {"leapalign": "LeapAlignMethod", "refl": "LeapAlignMethodReFL", "draft_k": "LeapAlignMethodDraftK",
                 "draft_lv": "LeapAlignMethodDraftLV", "drtune": "LeapAlignMethodDRTune",
                 "full_backprop": "LeapAlignMethodFullBackprop"}
"""The method block of each method (``nodes/method_nodes.py``): ``--set TRAIN.method=NAME`` swaps to it."""
DEFAULT_RUN_NAME = "leapalign_run"
_STALE_TEMP = re.compile(r"^\.checkpoint-\d+\.pt\..*\.tmp$")


@dataclass(frozen=True)
class TrainingRun:
    """One training node of the prompt and its run folder (None when run_name comes from a link)."""

    node_id: str
    label: str
    folder: Path | None
    resume: bool
    steps: int | None

    @property
    def metrics(self) -> Path | None:
        return self.folder / "metrics.jsonl" if self.folder else None

    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.folder) if self.folder else []


def training_runs(prompt: dict[str, dict], output_dir: Path) -> list[TrainingRun]:
    runs = []
    for node_id in sorted_node_ids(prompt):
        node = prompt[node_id]
        if node.get("class_type") not in TRAIN_NODES:
            continue
        inputs = node.get("inputs", {})
        name = inputs.get("run_name", DEFAULT_RUN_NAME)
        folder = None
        if isinstance(name, str) and name.strip():
            folder = (output_dir / RUNS_FOLDER / name.strip()).resolve()
            if output_dir.resolve() not in folder.parents:
                folder = None  # the node itself refuses names that leave its folder
        steps = inputs.get("steps") if isinstance(inputs.get("steps"), int) else None
        runs.append(TrainingRun(node_id, node_label(node_id, node), folder, inputs.get("resume") is True, steps))
    return runs


def plan_resume(prompt: dict[str, dict], runs: list[TrainingRun], resume: str | None,
                warn=lambda message: None) -> Path | None:
    """Check the run folders against ``--resume`` and switch the nodes' ``resume`` input on if asked.

    Returns the checkpoint the (single) training node will continue from, or None for a fresh run.
    A fresh run into a folder that already holds an earlier run's results is refused, so two runs
    never mix. On resume, an unreadable newest checkpoint is skipped (``warn`` names it and the one
    used), and metrics.jsonl is cut back to the step of the checkpoint used.
    """
    if resume is None:
        for run in runs:
            _refuse_earlier_results(run)
        resuming = [r for r in runs if r.resume]
        return resuming[0].checkpoints()[-1] if len(resuming) == 1 and resuming[0].checkpoints() else None
    if not runs:
        raise CLIError(f"--resume: the workflow has no {TRAIN_NODE} node to resume")
    latest = None
    for run in runs:
        if run.folder is None:
            raise CLIError(f"--resume: the run_name of node {run.label} comes from another node; "
                           "give it a fixed run_name to resume")
        if resume != "latest":
            if len(runs) > 1:
                raise CLIError("--resume CKPT needs a workflow with a single training node; use --resume alone")
            adopt_checkpoint(Path(resume), run.folder, warn)
        latest, warnings = newest_readable(run.folder)
        for warning in warnings:
            warn(f"warning: {warning}")
        if latest is None:
            raise CLIError(f"--resume: no readable checkpoint in {run.folder} to continue from; "
                           "run without --resume to start, or check --output")
        trim_metrics(run.folder / METRICS_FILE, checkpoint_step(latest))
    mark_resume(prompt, runs)
    return latest


def _refuse_earlier_results(run: TrainingRun) -> None:
    if run.folder is None or run.resume:
        return
    existing = run.checkpoints()
    if existing:
        raise CLIError(f"{run.folder} already holds checkpoints of an earlier run (latest {existing[-1].name}); "
                       "pass --resume to continue it, or choose another --output folder")
    if existing_results(run.folder):
        raise CLIError(f"{run.folder} already holds the metrics.jsonl of an earlier run that stopped before its "
                       "first checkpoint; choose another --output folder (or remove that one)")


def mark_resume(prompt: dict[str, dict], runs: list[TrainingRun]) -> None:
    """Switch the training nodes' ``resume`` input on (they continue from their folder's latest checkpoint)."""
    for run in runs:
        prompt[run.node_id]["inputs"]["resume"] = True


def adopt_checkpoint(ckpt: Path, folder: Path, warn=lambda message: None) -> Path:
    """Make ``ckpt`` the latest checkpoint of ``folder`` (copied in atomically when it lives elsewhere).

    The node continues from the newest checkpoint of its run folder, so checkpoints newer than
    ``ckpt`` (a continuation now abandoned) move into ``superseded-<time>/`` with a copy of
    metrics.jsonl: nothing is deleted.
    """
    if ckpt.is_dir():
        found = list_checkpoints(ckpt)
        if not found:
            raise CLIError(f"--resume {ckpt}: no checkpoint-*.pt file in that folder")
        ckpt = found[-1]
    if not ckpt.is_file():
        raise CLIError(f"--resume {ckpt}: no such checkpoint file")
    step = checkpoint_step(ckpt)
    if step is None:
        raise CLIError(f"--resume {ckpt}: not a training checkpoint (expected a checkpoint-XXXXXXXX.pt file)")
    try:
        safe_load(ckpt)
    except CheckpointError as exc:
        raise CLIError(f"--resume {ckpt}: {exc}") from None
    target = folder / ckpt.name
    if ckpt.resolve() != target.resolve() and target.exists():
        raise CLIError(f"--resume {ckpt}: {target} already exists; resume with --resume {target} to use it")
    newer = [p for p in list_checkpoints(folder) if checkpoint_step(p) > step]
    if newer:
        aside = folder / time.strftime("superseded-%Y%m%d-%H%M%S", time.gmtime())
        aside.mkdir()
        if (folder / METRICS_FILE).is_file():
            shutil.copy2(folder / METRICS_FILE, aside / METRICS_FILE)
        for path in newer:
            path.rename(aside / path.name)
        warn(f"note: resuming from step {step}; the newer checkpoints ({', '.join(p.name for p in newer)}) "
             f"moved to {aside}")
    if ckpt.resolve() == target.resolve():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with open(ckpt, "rb") as source:
        return atomic_write(target, lambda handle: shutil.copyfileobj(source, handle))


def remove_stale_temp_files(runs: list[TrainingRun]) -> list[Path]:
    """Temp files that a killed run left mid-write (never a complete checkpoint); rank 0 only."""
    removed = []
    for run in runs:
        if run.folder is not None and run.folder.is_dir():
            for path in run.folder.iterdir():
                if _STALE_TEMP.match(path.name):
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed

