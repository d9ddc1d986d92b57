"""A real ComfyUI server (``main.py``) with this pack loaded, for tests and benchmarks that need the
HTTP/websocket server and the web editor rather than ComfyUI booted in-process.

``ComfyServer`` starts ``python <comfyui>/main.py --cpu --listen 127.0.0.1 --port <free>`` with
``--base-directory`` set to a scratch folder: its ``custom_nodes/`` holds one symlink to this
repository (the pack, as a ``git clone`` into ``custom_nodes`` would), and models, output, temp,
input and the editor's user settings all stay inside the scratch folder. Stopping it ends only the
process it started. The HTTP calls use the standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_FOLDER = "leapalign-comfy"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; playwright drives it, never downloads its own
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


class ComfyServerError(RuntimeError):
    """The server did not start or answer; the message ends with the tail of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def comfyui_dir() -> Path:
    """The pinned ComfyUI the project's set-up unpacked (``COMFYUI_PATH`` overrides)."""
    return Path(os.environ.get("COMFYUI_PATH") or REPO / ".comfyui")


class ComfyServer:
    """``with ComfyServer(base) as server: server.url`` runs a ComfyUI server until the block ends."""

    def __init__(self, base: Path, *, extra_args: tuple[str, ...] = (), env: dict | None = None,
                 start_timeout_s: float = 120.0, comfyui: Path | None = None,
                 extra_nodes: dict[str, Path] | None = None, python: str | Path | None = None) -> None:
        self.base = Path(base)
        self.comfyui = Path(comfyui) if comfyui else comfyui_dir()
        self.python = str(python or sys.executable)  # another ComfyUI's own virtual environment, if given
        self.extra_nodes = dict(extra_nodes or {})  # more custom node folders to link in, by folder name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = tuple(extra_args)
        self.env = env
        self.start_timeout_s = start_timeout_s
        self.log_path = self.base / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def loras_dir(self) -> Path:
        return self.base / "models" / "loras"

    def start(self) -> ComfyServer:
        nodes_dir = self.base / "custom_nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        for name, folder in {PACK_FOLDER: REPO, **self.extra_nodes}.items():
            link = nodes_dir / name
            if not link.exists():
                link.symlink_to(folder, target_is_directory=True)
        command = [self.python, str(self.comfyui / "main.py"), "--cpu", "--listen", "127.0.0.1",
                   "--port", str(self.port), "--base-directory", str(self.base), "--disable-auto-launch",
                   *self.extra_args]
        env = {k: v for k, v in {**os.environ, **(self.env or {})}.items() if v is not None}  # None: unset
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, cwd=self.base, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ComfyServerError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                self.get_json("/system_stats")
                return self
            time.sleep(0.25)
        self.stop()
        raise ComfyServerError(f"ComfyUI did not answer within {self.start_timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        return ""

    # --- HTTP ---------------------------------------------------------------------------------------
    def get_json(self, route: str, timeout_s: float = 10.0):
        with urllib.request.urlopen(self.url + route, timeout=timeout_s) as response:
            return json.loads(response.read())

    def post_json(self, route: str, payload, timeout_s: float = 30.0):
        data = json.dumps({} if payload is None else payload).encode("utf-8")
        request = urllib.request.Request(self.url + route, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise ComfyServerError(f"POST {route} -> {exc.code}: {exc.read().decode('utf-8', 'replace')}") from None
        return json.loads(body) if body.strip() else None

    def queue(self, prompt: dict) -> str:
        """Queue an API-format prompt; returns its prompt id."""
        answer = self.post_json("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        return answer["prompt_id"]

    def wait_for(self, prompt_id: str, timeout_s: float = 300.0) -> dict:
        """The prompt's history entry once it finished (successfully or not)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry:  # ComfyUI adds the entry when the prompt has finished, successfully or not
                return entry
            time.sleep(0.2)
        raise ComfyServerError(f"prompt {prompt_id} did not finish within {timeout_s:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout_s: float = 420.0) -> dict:
        """Queue a prompt and wait for it; its history entry, or an error naming why it did not succeed."""
        entry = self.wait_for(self.queue(prompt), timeout_s)
        status = entry.get("status", {})
        if status.get("status_str") != "success":
            raise ComfyServerError(f"prompt failed: {status}\n{self.log_tail()}")
        return entry

    def set_setting(self, name: str, value) -> None:
        """An editor setting (``comfy.settings.json`` of the default user), e.g. ``Comfy.TutorialCompleted``."""
        self.post_json(f"/settings/{name}", value)

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})
