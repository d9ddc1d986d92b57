"""Keep the terminal for the CLI's own messages while ComfyUI's start-up chatter goes to a log file.

ComfyUI writes to stdout/stderr from Python logging, ``print`` and tqdm alike, so quieting it means
redirecting the process's file descriptors 1 and 2; the CLI keeps duplicates of the original ones
and writes its progress and errors there. With ``--verbose`` nothing is redirected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TextIO


class Console:
    """The person's terminal: ``out`` for results and progress, ``err`` for problems."""

    def __init__(self, verbose: bool = False, prefix: str = "") -> None:
        self.verbose = verbose
        self.prefix = prefix
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        self.log_path: Path | None = None
        self._saved_fds: tuple[int, int] | None = None

    def print(self, message: str = "", *, end: str = "\n") -> None:
        self.out.write(message + end)
        self.out.flush()

    def error(self, message: str) -> None:
        lines = str(message).splitlines() or [""]
        first = f"{self.prefix}error: {lines[0]}"
        self.err.write("\n".join([first, *lines[1:]]) + "\n")
        self.err.flush()

    def note(self, message: str) -> None:
        self.err.write(f"{self.prefix}{message}\n")
        self.err.flush()

    def is_terminal(self) -> bool:
        try:
            return self.out.isatty()
        except (ValueError, AttributeError):
            return False

    def capture_library_output(self, log_path: Path) -> None:
        """Send fds 1/2 (and Python logging at INFO) to ``log_path`` unless verbose; keep the terminal."""
        if self.verbose:
            logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
            return
        log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        saved_out, saved_err = os.dup(1), os.dup(2)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        self._saved_fds = (saved_out, saved_err)
        self.out = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8", errors="replace")
        self.err = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding="utf-8", errors="replace")
        self.log_path = log_path
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            force=True)

    def restore(self) -> None:
        """Give fds 1/2 back to the terminal (so nothing after the run is lost in the log)."""
        if self._saved_fds is None:
            return
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        saved_out, saved_err = self._saved_fds
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        self._saved_fds = None
