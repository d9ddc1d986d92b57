"""The pack inside ComfyUI's real server: graphs posted over HTTP ``/prompt`` run to completion.

The server is the ComfyUI the suite runs against (``main.py --cpu --listen 127.0.0.1``, its own
base folder with this pack and the test fixture pack as custom nodes). The LoRA the training graph
writes is then loaded with the stock ``LoraLoaderModelOnly`` in the server, in this process, and in
the other ComfyUI version when ``make test`` names one (``LEAPALIGN_OTHER_COMFYUI`` and
``LEAPALIGN_OTHER_PYTHON``): the patched model must compute the same numbers everywhere.
"""

from __future__ import annotations

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

import pytest
import torch

from trainer_cli.locate import REPO_ROOT

pytestmark = pytest.mark.slow  # a server start (~20-40 s on 2 cores) and two training graphs

TESTS = REPO_ROOT / "tests"
TRAIN_API = TESTS / "workflows" / "tiny_train.api.json"
DEMO_API = REPO_ROOT / "workflows" / "api" / "demo_digits.api.json"
START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, comfyui: Path, base: Path):
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        custom = base / "custom_nodes"
        custom.mkdir(parents=True)
        (custom / "leapalign-comfy").symlink_to(REPO_ROOT, target_is_directory=True)
        (custom / "leapalign_test_fixtures").symlink_to(TESTS / "fixture_nodes", target_is_directory=True)
        # One torch thread, as the CLI runs: on 2 shared cores the default thread pool is many times slower.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("COMFYUI_PATH", None)
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(base)],
            cwd=comfyui, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI's server exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1.0)
        raise AssertionError(f"ComfyUI's server did not answer within {START_TIMEOUT_S} s:\n{self.log_text()[-4000:]}")

    def run(self, prompt: dict) -> dict:
        """POST ``/prompt`` and wait for its history entry; returns the entry (fails on any error)."""
        body = json.dumps({"prompt": prompt, "client_id": str(uuid.uuid4())}).encode()
        request = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                prompt_id = json.loads(response.read())["prompt_id"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"/prompt refused the graph: {exc.read().decode(errors='replace')}") from exc
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
                assert entry["status"]["status_str"] == "success", (entry["status"], self.log_text()[-4000:])
                return entry
            if self.proc.poll() is not None:
                raise AssertionError(f"the server died while running the graph:\n{self.log_text()[-4000:]}")
            time.sleep(0.5)
        raise AssertionError(f"the graph did not finish within {RUN_TIMEOUT_S} s:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(comfy, tmp_path_factory):
    started = Server(comfy.install.path, tmp_path_factory.mktemp("server_base"))
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def test_server_loads_the_pack_without_import_errors(server, comfy):
    object_info = server.get("/object_info")
    assert "LeapAlignTrainLoRA" in object_info and "TinyFluxModelLoader" in object_info
    # ComfyUI lists each custom node folder with its import time, marked "(IMPORT FAILED)" if it failed.
    failed = [line for line in server.log_text().splitlines() if "(IMPORT FAILED)" in line and "custom_nodes" in line]
    assert not failed, failed
    assert server.get("/system_stats")["system"]["comfyui_version"] == comfy.version


@pytest.fixture(scope="module")
def trained_lora(server) -> Path:
    prompt = json.loads(TRAIN_API.read_text())
    server.run(prompt)
    loras = sorted((server.base / "models" / "loras").rglob("tiny_lora*.safetensors"))
    assert len(loras) == 1, loras
    return loras[0]


def test_training_graph_runs_through_http_and_its_lora_loads_in_the_server(server, trained_lora):
    """The LoRA written by the server's training graph, through stock LoraLoaderModelOnly + KSampler there."""
    name = trained_lora.relative_to(server.base / "models" / "loras").as_posix()
    prompt = {
        "1": {"class_type": "TinyFluxModelLoader", "inputs": {"seed": 0}},
        "2": {"class_type": "TinyCLIPLoader", "inputs": {"seed": 0}},
        "3": {"class_type": "TinyVAELoader", "inputs": {"seed": 0}},
        "4": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": name, "strength_model": 1.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a red apple"}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["5", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "seed": 1, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    server.run(prompt)
    log = server.log_text()
    assert "lora key not loaded" not in log and "NOT LOADED" not in log, log[-3000:]


def test_lora_from_the_server_means_the_same_in_process(comfy, trained_lora):
    from comfy_fixtures import build_tiny_flux
    from cross_version import lora_output

    patched = torch.tensor(lora_output(trained_lora))
    model = build_tiny_flux(seed=0)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 16, 8, 8, generator=gen)
    from comfy_fixtures import flux_conditioning

    tensor, extras = flux_conditioning(batch=2)[0]
    with torch.no_grad():
        base = model.model.apply_model(x, torch.tensor([0.7, 0.4]), c_crossattn=tensor, y=extras["pooled_output"],
                                       guidance=torch.full((2,), 3.5)).flatten()
    assert (patched - base).abs().max() > 1e-4  # the trained LoRA changes the model, so equality below means something


def test_lora_from_the_server_loads_the_same_in_the_other_version(comfy, trained_lora):
    """Cross-version: stock LoraLoaderModelOnly on the other ComfyUI gives the same patched model."""
    other, python = os.environ.get("LEAPALIGN_OTHER_COMFYUI"), os.environ.get("LEAPALIGN_OTHER_PYTHON")
    if not other or not python:
        pytest.skip("no second ComfyUI named (make test sets LEAPALIGN_OTHER_COMFYUI and LEAPALIGN_OTHER_PYTHON)")
    from cross_version import lora_output

    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    proc = subprocess.run([python, str(TESTS / "cross_version.py"), "--comfyui", other, "--lora", str(trained_lora)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert theirs["version"] != comfy.version
    ours = torch.tensor(lora_output(trained_lora))
    torch.testing.assert_close(torch.tensor(theirs["output"]), ours, rtol=1e-5, atol=1e-5)


def test_demo_workflow_runs_through_http(server):
    """The demo graph as shipped (digits world, LeapAlign training, evaluation) completes in the server."""
    prompt = json.loads(DEMO_API.read_text())
    entry = server.run(prompt)
    outputs = entry["outputs"]
    assert outputs, "the demo graph produced no outputs"
    loras = list((server.base / "models" / "loras").rglob("digits_leapalign*.safetensors"))
    assert len(loras) == 1, loras
