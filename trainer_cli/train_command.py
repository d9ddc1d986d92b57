"""``leapalign-comfy train``: run a training graph headless, on one process or as a torchrun job."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from leapalign.checkpoint import list_checkpoints
from leapalign.run_files import STOP_ENV
from leapalign.runlock import RunLock, RunLockedError

from .comfy_runtime import PromptResult, execute_prompt
from .commands import write_json_atomic
from .console import Console
from .errors import CLIError
from .launch import (
    Rank,
    barrier,
    init_process_group,
    launched_by_cli,
    pin_device,
    record_failure,
    relaunch,
    shutdown_process_group,
    torchrun_rank,
    worker_argv,
)
from .prepare import PreparedPrompt, boot, build_prompt, validate
from .progress import MetricsFollower, TensorBoardMirror, TrainingMonitor, format_duration
from .run_dir import RunDir, default_output
from .training_nodes import (
    RUNS_FOLDER,
    TrainingRun,
    mark_resume,
    plan_resume,
    remove_stale_temp_files,
    training_runs,
)
from .workflow import node_label, read_workflow

USER_ERROR_TYPES = ("ValueError", "LeapAlignNodeError", "CheckpointError", "PromptListError", "FileNotFoundError")


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    data = read_workflow(args.workflow)  # file problems are reported before anything slow starts
    rank = torchrun_rank()
    run = RunDir(Path(args.output or default_output(Path(args.workflow))).resolve())
    if args.gpus is not None and args.gpus < 1:
        raise CLIError(f"--gpus must be at least 1, got {args.gpus}")
    args.output_dir = str(run.path)
    if rank is None and args.gpus and args.gpus > 1:
        return _launch(args, console)
    if rank is not None and args.gpus and args.gpus != rank.local_world_size:
        raise CLIError(f"--gpus {args.gpus} conflicts with torchrun's {rank.local_world_size} processes per node; "
                       "leave --gpus out under torchrun (use --nproc-per-node)")
    rank = rank or Rank()
    if rank.distributed and not rank.is_main:
        console.prefix = f"[rank {rank.rank}] "
    new_folder = not run.path.exists()
    try:
        return _train(args, console, data, rank, run)
    except BaseException as exc:
        if new_folder and rank.is_main and isinstance(exc, CLIError) and exc.exit_code == 2:
            run.remove_if_unused()  # refused before any work: leave nothing behind
        recorded = False
        if rank.distributed and isinstance(exc, Exception):  # recorded before leaving the group, whose
            if isinstance(exc, CLIError):                      # peers then fail with errors of their own
                message, code = str(exc), exc.exit_code
            else:
                message, code = f"unexpected {type(exc).__name__}: {exc} (run with --verbose for the traceback)", 1
            recorded = record_failure(message, code, expected=isinstance(exc, CLIError))
        shutdown_process_group(clean=False)
        if recorded and launched_by_cli() and not args.verbose:
            raise SystemExit(code) from None  # the launcher prints the root cause, once
        raise


def _launch(args: argparse.Namespace, console: Console) -> int:
    import torch  # noqa: PLC0415

    if torch.cuda.is_available() and not args.cpu:
        count = torch.cuda.device_count()
        if args.gpus > count:
            raise CLIError(f"--gpus {args.gpus}: this machine has {count} visible GPU(s)")
        what = f"{args.gpus} GPU processes (nccl)"
    else:
        what = f"{args.gpus} CPU processes (gloo; no GPU {'requested' if args.cpu else 'available'})"
    console.note(f"launching {what} through torch.distributed.run")
    return relaunch(args.gpus, worker_argv(args.argv), verbose=args.verbose, err=console.err)


def _train(args: argparse.Namespace, console: Console, data: dict, rank: Rank, run: RunDir) -> int:
    lock = None
    if rank.is_main:  # one run folder, one run: held by rank 0 for the whole job, before the log opens
        run.create()
        try:
            lock = RunLock(run.path).acquire()
        except RunLockedError as exc:
            raise CLIError(f"{exc}; wait for it to finish, or choose another --output folder") from None
    try:
        return _train_locked(args, console, data, rank, run)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(args: argparse.Namespace, console: Console, data: dict, rank: Rank, run: RunDir) -> int:
    started = time.monotonic()
    device = pin_device(rank, force_cpu=args.cpu)
    comfy_output = run.path if rank.is_main else _scratch_output(run, rank)
    boot(args, console, run.log_file(rank.rank, rank.world_size), output_dir=comfy_output, loras_dir=comfy_output)
    prepared = validate(build_prompt(data, args.set))
    runs = training_runs(prepared.prompt, run.path)
    if rank.distributed:  # joined before rank 0's checks, so that if they fail the others fail fast too
        init_process_group(device, args.dist_timeout)
    resume_from = None
    if rank.is_main:  # checks the run folders and may copy a named checkpoint in: rank 0's job
        resume_from = plan_resume(prepared.prompt, runs, args.resume, warn=console.note)
        remove_stale_temp_files(runs)
        if rank.distributed and runs:
            (run.path / RUNS_FOLDER).mkdir(exist_ok=True)  # what the other ranks' scratch folders link to
        _record_workflow(run, prepared, resume_from, console)
    if rank.distributed:
        barrier()  # the other ranks look at the run folder only once rank 0 has prepared it
        if not rank.is_main and args.resume is not None:
            mark_resume(prepared.prompt, runs)
    result, monitor, wrote = _execute(prepared, runs, resume_from, rank, console, args)
    if not result.success and rank.is_main:
        _drop_unused_copy(args.resume, resume_from, runs)
    _raise_on_failure(result, prepared, args.verbose, runs)
    shutdown_process_group(clean=True)
    if rank.is_main:
        _summary(console, run, runs, monitor, wrote, time.monotonic() - started)
    return 0


def _drop_unused_copy(resume: str | None, resume_from: Path | None, runs: list[TrainingRun]) -> None:
    """A checkpoint ``--resume CKPT`` copied in from elsewhere, that the failed run never trained from,
    goes again: left there it would make the folder look like a started run (the original stays)."""
    if resume in (None, "latest") or resume_from is None or len(runs) != 1 or runs[0].folder is None:
        return
    source = Path(resume)
    source = list_checkpoints(source)[-1] if source.is_dir() and list_checkpoints(source) else source
    if source.resolve() == resume_from.resolve() or runs[0].checkpoints()[-1:] != [resume_from]:
        return
    metrics = runs[0].folder / "metrics.jsonl"
    if not metrics.exists() or metrics.stat().st_size == 0:
        resume_from.unlink(missing_ok=True)


def _scratch_output(run: RunDir, rank: Rank) -> Path:
    """ComfyUI's output folder for ranks > 0: a private temp folder, so that only rank 0 writes files.

    Its ``leapalign/`` entry links to the run folder's, where the training node of every rank reads
    the checkpoints to resume from (the node itself writes only on rank 0).
    """
    scratch = Path(tempfile.mkdtemp(prefix=f"leapalign-rank{rank.rank}-"))
    atexit.register(shutil.rmtree, scratch, True)
    try:
        (scratch / RUNS_FOLDER).symlink_to(run.path / RUNS_FOLDER, target_is_directory=True)
    except OSError:  # no symlinks here (some Windows set-ups): share the run folder instead
        return run.path
    return scratch


def _record_workflow(run: RunDir, prepared: PreparedPrompt, resume: Path | None, console: Console) -> None:
    """Keep the graph that produced this run; on resume, say what changed since."""
    if resume is not None and run.workflow.is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            before = json.loads(run.workflow.read_text(encoding="utf-8"))
            for change in workflow_changes(before, prepared.prompt)[:10]:
                console.note(f"note: since the checkpointed run, {change}")
    write_json_atomic(run.workflow, prepared.prompt)


def workflow_changes(before: dict, after: dict) -> list[str]:
    changes = []
    for node_id in sorted(set(before) | set(after)):
        old, new = before.get(node_id), after.get(node_id)
        if old is None or new is None:
            changes.append(f"node {node_id} was {'added' if old is None else 'removed'}")
            continue
        for name in sorted(set(old.get("inputs", {})) | set(new.get("inputs", {}))):
            a, b = old.get("inputs", {}).get(name), new.get("inputs", {}).get(name)
            if a != b and name != "resume":
                changes.append(f"node {node_label(node_id, new)} input {name!r} changed from {a!r} to {b!r}")
    return changes


def _execute(prepared: PreparedPrompt, runs: list[TrainingRun], resume: Path | None, rank: Rank,
             console: Console, args: argparse.Namespace) -> tuple[PromptResult, TrainingMonitor | None, list[Path]]:
    monitor = None
    followers: list[MetricsFollower] = []
    mirrors: list[TensorBoardMirror] = []
    output = Path(args.output_dir)
    before = _files(output) if rank.is_main else {}
    if rank.is_main:
        monitor = TrainingMonitor(console, prepared.labels)
        for run in runs:
            if run.metrics is None:
                continue
            mirror = TensorBoardMirror(run.folder / "tensorboard") if not args.no_tensorboard else None
            if mirror is not None:
                mirrors.append(mirror)
            followers.append(MetricsFollower(run.metrics, _fan_out(monitor, mirror)).start())
        if resume is not None:
            console.note(f"resuming from {resume}")
    try:
        with _graceful_interrupt(console, distributed=rank.distributed):
            result = execute_prompt(prepared.prompt, on_event=monitor.on_event if monitor else None,
                                    outputs=prepared.outputs)
    finally:
        for follower in followers:
            follower.stop()
        if monitor is not None:
            monitor.finish()
        for mirror in mirrors:
            mirror.close()
    after = _files(output) if rank.is_main else {}
    wrote = sorted(p for p, stamp in after.items() if before.get(p) != stamp)
    return result, monitor, wrote


STOP_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143}
DIST_STOP_GRACE_S = 20.0
"""Under torchrun, how long a rank may take to reach the step boundary after a stop signal before it
dies of that signal as it would without a handler (torchrun's agent waits 30 s before SIGKILL)."""


def _die_by(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
_stopped_by: list[int] = []  # the signal that asked for the stop, for the exit code


@contextlib.contextmanager
def _graceful_interrupt(console: Console, distributed: bool):
    """Ctrl-C or SIGTERM: stop at the next step boundary with a checkpoint; a second Ctrl-C stops at once.

    The training node polls a process-wide stop flag (``leapalign.run_files.STOP_ENV``) before every
    step. In one process, ComfyUI's Cancel is raised too, so that any other node stops as well (the
    training loop then goes back to the last step boundary and checkpoints it). Under torchrun, only
    the flag: the ranks agree on the boundary in a collective, and a Cancel inside one rank's step
    would leave the others waiting; a rank that cannot get there within ``DIST_STOP_GRACE_S`` (its
    peers are gone) dies of the signal as it would have without this handler.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import comfy.model_management  # noqa: PLC0415

    _stopped_by.clear()

    def on_signal(signum, frame):
        if os.environ.get(STOP_ENV) == "1" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if os.environ.get(STOP_ENV) == "1":
            return
        _stopped_by.append(signum)
        os.environ[STOP_ENV] = "1"
        console.note(f"\nstopping at the next step and writing a checkpoint ({signal.Signals(signum).name}; "
                     "Ctrl-C again to stop at once) ...")
        if not distributed:
            comfy.model_management.interrupt_current_processing(True)
        else:  # the elastic agent also uses SIGTERM to stop survivors of a failed rank: never outlive its patience
            timer = threading.Timer(DIST_STOP_GRACE_S, _die_by, args=(signum,))
            timer.daemon = True
            timer.start()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.environ.pop(STOP_ENV, None)
        comfy.model_management.interrupt_current_processing(False)


def _fan_out(monitor: TrainingMonitor, mirror: TensorBoardMirror | None):
    def on_record(record: dict) -> None:
        if mirror is not None:
            mirror.add(record)
        monitor.on_record(record)

    return on_record


def _files(folder: Path) -> dict[Path, tuple[int, int]]:
    """LoRA files under ``folder`` with their modification stamps (to report what this run wrote)."""
    out = {}
    for path in folder.rglob("*.safetensors"):
        with contextlib.suppress(OSError):
            st = path.stat()
            out[path] = (st.st_mtime_ns, st.st_size)
    return out


def _raise_on_failure(result: PromptResult, prepared: PreparedPrompt, verbose: bool,
                      runs: list[TrainingRun]) -> None:
    if result.interrupted:
        code = STOP_SIGNALS.get(_stopped_by[-1], 130) if _stopped_by else 130
        checkpoints = [c for run in runs if (c := run.checkpoints())]
        if checkpoints:
            latest = ", ".join(c[-1].name for c in checkpoints)
            raise CLIError(f"the run was stopped; its latest checkpoint is {latest}. Run the same command with "
                           "--resume to continue from it", code)
        raise CLIError("the run was stopped before its first checkpoint; nothing to resume (run the same command "
                       "again to start over)", code)
    if result.success:
        return
    error: dict[str, Any] = result.error or {}
    node_id = str(error.get("node_id", "?"))
    label = node_label(node_id, prepared.prompt.get(node_id, {"class_type": error.get("node_type", "?")}))
    kind = str(error.get("exception_type", "")).rsplit(".", 1)[-1]
    message = str(error.get("exception_message", "")).strip() or "(no message)"
    if kind and kind not in USER_ERROR_TYPES:
        message = f"{kind}: {message}"
    text = f"node {label} failed: {message}"
    if verbose and error.get("traceback"):
        text += "\n" + "".join(error["traceback"]).rstrip()
    raise CLIError(text, 1)


def _summary(console: Console, run: RunDir, runs: list[TrainingRun], monitor: TrainingMonitor | None,
             wrote: list[Path], seconds: float) -> None:
    last = monitor.last_record if monitor is not None else {}
    step = f", {last['step']} training steps" if isinstance(last.get("step"), int) else ""
    console.print(f"done in {format_duration(seconds)}{step}; run folder {run.path}")
    for path in wrote:
        console.print(f"  LoRA:        {path}")
    for training in runs:
        checkpoints = training.checkpoints()
        if checkpoints:
            console.print(f"  checkpoint:  {checkpoints[-1]}")
        if training.metrics is not None and training.metrics.is_file():
            console.print(f"  metrics:     {training.metrics}")
        if training.folder is not None and (training.folder / "tensorboard").is_dir():
            console.print(f"  tensorboard: tensorboard --logdir {training.folder / 'tensorboard'}")
