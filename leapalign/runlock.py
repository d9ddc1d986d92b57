"""One folder, one run: an exclusive lock on a run folder, held for the whole run.

The lock is ``flock`` on a ``.lock`` file inside the folder. The kernel releases it when the holding
process exits, however it exits (SIGKILL, a crash, a lost node), so a lock is never stale and never
needs deleting; the file itself stays (deleting it would let a late opener lock a file nobody else
sees). The holder writes who it is into the file, so a refused run can name it.

Where ``fcntl`` does not exist (Windows) runs are not locked; the rest of the project still refuses
to start a fresh run into a folder with results.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run folder."""


def describe_holder(info: dict) -> str:
    """``pid 123 on host-a since 2026-12-02 13:05:01 UTC (leapalign-comfy train x.json)``."""
    parts = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}"]
    if isinstance(info.get("since"), (int, float)):
        parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info["since"])))
    if info.get("command"):
        parts.append(f"({info['command']})")
    return " ".join(parts)


class RunLock:
    """``with RunLock(folder, what="..."):`` holds ``folder/.lock`` or raises :class:`RunLockedError`."""

    def __init__(self, folder: str | Path, command: str | None = None):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command if command is not None else " ".join(Path(a).name if i == 0 else a
                                                                   for i, a in enumerate(sys.argv[:8]))
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if fcntl is None or self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(f"{self.folder} is in use by another run: {describe_holder(holder)}") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # nobody holds it now; the file stays (see the module docstring)
        finally:
            os.close(fd)  # closing releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        info = json.loads(data) if data else {}
    except (OSError, ValueError):
        info = {}
    return info if isinstance(info, dict) else {}
