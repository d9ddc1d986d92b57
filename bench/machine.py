"""Where and when a figure was measured: CPU model, cores, commit, load, versions.

Every result file carries this record so that a number on the results page can be traced to the
machine and the code that produced it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

from leapalign.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_changes() -> list[str] | None:
    """Paths where the working tree differs from the commit (``git status --porcelain``); None if unknown.

    The lead commits after a benchmark run, so a run usually measures the commit plus uncommitted work.
    """
    try:
        out = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line[3:] for line in out.splitlines() if line.strip()]


def machine_record() -> dict:
    import torch

    cpu = _lscpu()
    changes = git_changes()
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
    return {
        "cpu_model": cpu.get("Model name", platform.processor() or "unknown"),
        "cpus_visible": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads_per_core": cpu.get("Thread(s) per core"),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": git_commit(),
        "working_tree_dirty": changes is None or bool(changes),
        "working_tree_changes": changes,
        "loadavg": list(os.getloadavg()),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(path: Path, data: dict) -> None:
    """Atomic write (temp file + ``os.replace``): a reader never sees half a result file."""
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False, default=float) + "\n")
