"""Run the real ``leapalign-comfy`` CLI as a subprocess, the way a user would, for the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from trainer_cli.locate import REPO_ROOT

WORKFLOWS = REPO_ROOT / "tests" / "workflows"
FIXTURE_NODES = REPO_ROOT / "tests" / "fixture_nodes"
CONSOLE_SCRIPT = Path(sys.executable).parent / "leapalign-comfy"
TRAIN_UI = WORKFLOWS / "tiny_train.ui.json"
TRAIN_API = WORKFLOWS / "tiny_train.api.json"
SAMPLE_UI = WORKFLOWS / "tiny_sample.ui.json"
SAMPLE_API = WORKFLOWS / "tiny_sample.api.json"
RUN_NAME = "tiny_run"  # run_name of the training node in tiny_train.*.json
LORA_NAME = "tiny_lora_00001_.safetensors"  # what its Save LoRA node writes first


def cli_env(**extra: str) -> dict[str, str]:
    """One thread per process, so that runs compare bit for bit; no hub access; no stray torchrun env."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def cli_command(*args: str | os.PathLike, script: bool = False) -> list[str]:
    head = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "trainer_cli.main"]
    return [*head, *map(str, args)]


def run_cli(*args: str | os.PathLike, script: bool = False, timeout: float = 600, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args, script=script), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or REPO_ROOT, env=env or cli_env())


def start_cli(*args: str | os.PathLike, stdout, stderr, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(cli_command(*args), stdout=stdout, stderr=stderr, cwd=REPO_ROOT, env=env or cli_env())


def train_args(workflow: Path, output: Path, *extra: str | os.PathLike) -> list[str | os.PathLike]:
    return ["train", workflow, "--custom-nodes", FIXTURE_NODES, "--output", output, *extra]


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def run_folder(output: Path) -> Path:
    return output / "leapalign" / RUN_NAME
