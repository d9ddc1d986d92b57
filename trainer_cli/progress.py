"""Training progress on the terminal, metrics mirrored to TensorBoard.

Two sources feed it: ComfyUI's progress events (every ``ProgressBar`` update of any node: value and
max, which give steps/s and ETA) and the training node's ``metrics.jsonl`` in the run directory
(one JSON object per optimizer step: loss, reward, ...), followed by a small polling thread because
the node writes it from inside the executor. Only rank 0 runs a monitor.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .console import Console

SHOWN_METRICS = ("loss", "reward", "reward_mean", "grad_norm")


class MetricsFollower:
    """Calls ``on_record`` for every complete JSON line appended to ``path`` (polled in a thread)."""

    def __init__(self, path: Path, on_record: Callable[[dict], None], interval_s: float = 0.25) -> None:
        self.path = path
        self.on_record = on_record
        self.interval_s = interval_s
        stat = path.stat() if path.exists() else None
        self._offset = stat.st_size if stat else 0  # lines of the run being resumed are not news
        self._inode = stat.st_ino if stat else None
        self._partial = b""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="leapalign-metrics", daemon=True)

    def start(self) -> MetricsFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()  # whatever arrived after the last tick

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        with self._lock:
            try:
                with open(self.path, "rb") as handle:
                    stat = os.fstat(handle.fileno())
                    if stat.st_ino != self._inode or stat.st_size < self._offset:  # replaced or truncated
                        self._inode, self._offset, self._partial = stat.st_ino, 0, b""
                    handle.seek(self._offset)
                    chunk = handle.read()
            except FileNotFoundError:
                return
            if not chunk:
                return
            self._offset += len(chunk)
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    self.on_record(record)


def tensorboard_available() -> bool:
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardMirror:
    """Scalars of each metrics record as TensorBoard events; a no-op when tensorboard is missing."""

    def __init__(self, folder: Path) -> None:
        self.writer = None
        if not tensorboard_available():
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (needs the tensorboard package)
        except ImportError:
            return
        self.writer = SummaryWriter(log_dir=str(folder))

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def add(self, record: dict) -> None:
        if self.writer is None or not isinstance(record.get("step"), int):
            return
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


MEMORY_PLAN_EVENT = "leapalign.memory_plan"  # sent by nodes/memory_options.py


class TrainingMonitor:
    """Turns progress events and metrics records into terminal lines (throttled when not a TTY)."""

    def __init__(self, console: Console, labels: dict[str, str], *, tensorboard: TensorBoardMirror | None = None,
                 min_interval_s: float | None = None) -> None:
        """``labels`` name nodes by id; ``tensorboard`` gets every record passed to ``on_record``."""
        self.console = console
        self.labels = labels
        self.tensorboard = tensorboard
        self.tty = console.is_terminal()
        self.min_interval_s = (0.2 if self.tty else 2.0) if min_interval_s is None else min_interval_s
        self.records = 0
        self.last_record: dict[str, Any] = {}
        self._node: str | None = None
        self._value = 0.0
        self._max = 0.0
        self._started: dict[str, tuple[float, float]] = {}  # node -> (time, value) of its bar's first update
        self._last_value: dict[str, float] = {}
        self._last_print = 0.0
        self._open_line = False
        self._metrics_node: str | None = None  # the node that was running when the last record arrived
        self._last_completed: tuple[str, float] | None = None
        self._lock = threading.Lock()

    # ComfyUI's executor events (HeadlessServer.on_event)
    def on_event(self, event: str, data: dict) -> None:
        if event == "progress":
            self._progress(str(data.get("node")), float(data.get("value") or 0), float(data.get("max") or 0))
        elif event == "executing" and data.get("node") is not None:
            self._node = str(data["node"])
        elif event == MEMORY_PLAN_EVENT and isinstance(data.get("text"), str):
            self.finish()
            self.console.print(data["text"])  # the training node's memory plan, before its first step

    def on_record(self, record: dict) -> None:
        """One metrics.jsonl line from the training node."""
        with self._lock:
            self.records += 1
            self.last_record = record
            self._metrics_node = self._node
        if self.tensorboard is not None:
            self.tensorboard.add(record)
        self._render(force=False)

    def _progress(self, node: str, value: float, maximum: float) -> None:
        now = time.monotonic()
        with self._lock:
            if node not in self._started or value < self._last_value.get(node, 0.0):  # a new bar on this node
                self._started[node] = (now, value)
            self._last_value[node] = value
            self._node, self._value, self._max = node, value, maximum
            # A finished bar is always shown once; nodes that run many bars (one per sampler call) are
            # not allowed to flood the log with identical "done" lines.
            completed = maximum > 0 and value >= maximum and self._last_completed != (node, maximum)
            if completed:
                self._last_completed = (node, maximum)
        self._render(force=completed)

    def line(self) -> str:
        with self._lock:
            node, value, maximum = self._node, self._value, self._max
            # training metrics belong on the training node's line only
            record = dict(self.last_record) if node == self._metrics_node else {}
            started = self._started.get(node or "")
        parts = []
        if node is not None:
            parts.append(self.labels.get(node, f"node {node}"))
        if maximum:
            parts.append(f"step {value:g}/{maximum:g}")
        if started is not None and value > started[1]:
            elapsed = time.monotonic() - started[0]
            rate = (value - started[1]) / elapsed if elapsed > 0 else float("inf")
            parts.append(f"{rate:.2f} steps/s" if rate >= 1 else f"{1 / rate:.1f} s/step")
            if maximum:
                parts.append(f"ETA {format_duration((maximum - value) / rate if rate > 0 else float('inf'))}")
        for key in SHOWN_METRICS:
            value_ = record.get(key)
            if isinstance(value_, (int, float)) and not isinstance(value_, bool):
                parts.append(f"{key} {value_:.4g}")
        return "  ".join(parts)

    def _render(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_print < self.min_interval_s:
            return
        self._last_print = now
        text = self.line()
        if not text:
            return
        if self.tty:
            self.console.print("\r\x1b[2K" + text, end="")
            self._open_line = True
        else:
            self.console.print(text)

    def finish(self) -> None:
        if self._open_line:
            self.console.print()
            self._open_line = False
