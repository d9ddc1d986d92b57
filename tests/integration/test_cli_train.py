"""``leapalign-comfy train`` end to end on the tiny fixtures (pinned ComfyUI, CPU), as subprocesses.

One uninterrupted single-process run of the UI-format workflow is the reference for everything
else: its API twin, two gloo processes, and a SIGKILLed + resumed run must all reproduce its LoRA.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from cli_harness import (
    LORA_NAME,
    TRAIN_API,
    TRAIN_UI,
    cli_command,
    cli_env,
    explain,
    run_cli,
    run_folder,
    start_cli,
    train_args,
)
from safetensors import safe_open
from safetensors.torch import load_file

from trainer_cli.locate import REPO_ROOT

STEPS = 4  # tiny_train.*.json: 4 optimizer steps of 4 prompts, a checkpoint every 2 steps


class IntegrityWatcher(threading.Thread):
    """Reads every visible file of a run folder over and over while a run writes it.

    A file that can be seen under its final name must always be complete: checkpoints load with
    ``weights_only=True``, LoRAs open with safetensors, JSON parses, every finished metrics line parses.
    Temp files (dot files) and the logs are not results and are skipped.
    """

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        self.folder = folder
        self.problems: list[str] = []
        self.checked = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.scan()
            time.sleep(0.05)

    def stop(self):
        self._halt.set()
        self.join()
        self.scan()

    def scan(self):
        if not self.folder.exists():
            return
        for path in self.folder.rglob("*"):
            if path.name.startswith(".") or "logs" in path.relative_to(self.folder).parts or not path.is_file():
                continue
            try:
                self.check(path)
                self.checked += 1
            except FileNotFoundError:
                continue  # replaced or pruned between listing and reading
            except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
                self.problems.append(f"{path}: {type(exc).__name__}: {exc}")

    @staticmethod
    def check(path: Path):
        if path.suffix == ".pt":
            state = torch.load(path, map_location="cpu", weights_only=True)
            assert state["format"] == "leapalign-train-checkpoint"
        elif path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():
                    handle.get_tensor(key)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines(keepends=True):
                if line.endswith("\n"):
                    json.loads(line)


def assert_same_lora(a: Path, b: Path) -> None:
    """Bit-identical tensors (same keys, dtypes, values) and the same metadata."""
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        assert fa.metadata() == fb.metadata()
        assert sorted(fa.keys()) == sorted(fb.keys())
        for key in fa.keys():
            ta, tb = fa.get_tensor(key), fb.get_tensor(key)
            assert ta.dtype == tb.dtype and torch.equal(ta, tb), key


def metrics_of(output: Path) -> list[dict]:
    return [json.loads(line) for line in (run_folder(output) / "metrics.jsonl").read_text().splitlines()]


def visible_files(output: Path) -> set[str]:
    """Result files of a run folder (not ComfyUI's logs, not TensorBoard's per-process event files)."""
    return {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file() and not p.name.startswith(".")
            and "logs" not in p.parts and "tensorboard" not in p.parts}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The reference: the UI-format workflow through the installed console script, one process."""
    output = tmp_path_factory.mktemp("baseline") / "run"
    watcher = IntegrityWatcher(output)
    watcher.start()
    proc = run_cli(*train_args(TRAIN_UI, output), script=True)
    watcher.stop()
    assert proc.returncode == 0, explain(proc)
    return output, proc, watcher


def test_ui_workflow_writes_a_lora_and_a_complete_run_folder(baseline):
    output, proc, watcher = baseline
    assert proc.stderr == "", explain(proc)  # ComfyUI's log went to logs/, not to the terminal
    assert "6 'Train LoRA' (LeapAlignTrainLoRA)  step 4/4" in proc.stdout
    assert "steps/s" in proc.stdout and "loss " in proc.stdout and "reward " in proc.stdout
    assert f"LoRA:        {output / LORA_NAME}" in proc.stdout
    assert visible_files(output) == {
        LORA_NAME, "workflow.api.json", "leapalign/tiny_run/metrics.jsonl",
        "leapalign/tiny_run/checkpoint-00000002.pt", "leapalign/tiny_run/checkpoint-00000004.pt"}
    assert [m["step"] for m in metrics_of(output)] == [1, 2, 3, 4]
    assert json.loads((output / "workflow.api.json").read_text()) == json.loads(TRAIN_API.read_text())
    assert watcher.checked > 0 and watcher.problems == []
    assert "Total VRAM" in (output / "logs" / "comfyui.log").read_text()
    if importlib.util.find_spec("tensorboard") is not None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_folder(output) / "tensorboard"))
        events.Reload()
        assert [e.step for e in events.Scalars("reward")] == [1, 2, 3, 4]
        assert [e.value for e in events.Scalars("loss")] == pytest.approx([m["loss"] for m in metrics_of(output)])


def test_stock_lora_loader_loads_the_result(baseline, comfy, caplog):
    """LoraLoaderModelOnly patches every module of the file with exactly W + (alpha / rank) * up @ down."""
    import folder_paths
    from comfy_fixtures import build_tiny_flux

    import nodes as comfy_nodes

    output = baseline[0]
    folder_paths.add_model_folder_path("loras", str(output))
    model = build_tiny_flux(seed=0)
    with caplog.at_level("WARNING"):
        (patched,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, LORA_NAME, 1.0)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    lora = load_file(str(output / LORA_NAME))
    modules = sorted({key.split(".")[0] for key in lora})
    assert len(lora) == 3 * len(modules) and len(patched.patches) == len(modules) > 0
    diffusion = patched.model.diffusion_model
    before = {k: v.clone() for k, v in diffusion.state_dict().items()}
    patched.patch_model()
    try:
        changed = 0
        for module in modules:
            name = module.removeprefix("lora_unet_")
            key = next(k for k in before if k.endswith(".weight") and k[:-len(".weight")].replace(".", "_") == name)
            up, down = lora[f"{module}.lora_up.weight"], lora[f"{module}.lora_down.weight"]
            scale = float(lora[f"{module}.alpha"]) / down.shape[0]
            expected = before[key] + scale * (up @ down)
            torch.testing.assert_close(diffusion.state_dict()[key], expected, rtol=0, atol=1e-6)
            changed += int(not torch.equal(diffusion.state_dict()[key], before[key]))
        assert changed == len(modules)  # training moved every LoRA (up starts at zero)
    finally:
        patched.unpatch_model()


def test_api_twin_gives_a_bit_identical_lora(baseline, tmp_path):
    proc = run_cli(*train_args(TRAIN_API, tmp_path / "run"))
    assert proc.returncode == 0, explain(proc)
    assert_same_lora(tmp_path / "run" / LORA_NAME, baseline[0] / LORA_NAME)
    assert (tmp_path / "run" / LORA_NAME).read_bytes() == (baseline[0] / LORA_NAME).read_bytes()


def test_fresh_run_into_a_folder_with_checkpoints_is_refused(baseline):
    output = baseline[0]
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*") if "logs" not in p.parts and p.name != ".lock"}
    proc = run_cli(*train_args(TRAIN_API, output))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {run_folder(output)} already holds checkpoints of an earlier run "
                                   "(latest checkpoint-00000004.pt); pass --resume to continue it, or choose "
                                   "another --output folder"), explain(proc)
    assert before == {p: p.stat().st_mtime_ns for p in output.rglob("*") if "logs" not in p.parts and p.name != ".lock"}


def test_node_error_at_run_time_is_one_line(tmp_path):
    proc = run_cli(*train_args(TRAIN_API, tmp_path / "run", "--set", "Train LoRA.width=40"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: node 6 'Train LoRA' (LeapAlignTrainLoRA) failed: LeapAlign Train LoRA: width and height must be "
        "multiples of 16 for Flux, got 40x32"], explain(proc)
    assert not (tmp_path / "run" / LORA_NAME).exists()


@pytest.mark.slow
def test_two_gloo_processes_match_one_at_the_same_global_batch(baseline, tmp_path):
    output = tmp_path / "run"
    watcher = IntegrityWatcher(output)
    watcher.start()
    proc = run_cli(*train_args(TRAIN_API, output, "--gpus", "2"))
    watcher.stop()
    assert proc.returncode == 0, explain(proc)
    assert "launching 2 CPU processes (gloo" in proc.stderr
    one, two = load_file(str(baseline[0] / LORA_NAME)), load_file(str(output / LORA_NAME))
    assert one.keys() == two.keys()
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert diff < 1e-5
    # Ranks saw disjoint shards: per-sample rewards come back concatenated in rank order (rank 0's two
    # samples, then rank 1's). They equal the single process's rewards of the same global samples, and those
    # are all distinct, so every sample of every step was computed by exactly one rank.
    for single, double in zip(metrics_of(baseline[0]), metrics_of(output), strict=True):
        assert len(set(single["rewards"])) == len(single["rewards"]) == 4
        assert double["rewards"] == pytest.approx(single["rewards"], abs=1e-5)
        # and directly: each rank trained on its own half of the global batch's samples and prompts
        assert double["sample_index"] == single["sample_index"] and double["prompts"] == single["prompts"]
        assert double["sample_rank"] == [0, 0, 1, 1] and single["sample_rank"] == [0, 0, 0, 0]
        shard = {rank: {i for i, r in zip(double["sample_index"], double["sample_rank"]) if r == rank} for rank in (0, 1)}
        assert len(shard[0]) == len(shard[1]) == 2 and not shard[0] & shard[1]
    # only rank 0 wrote: the same files as one process, plus a log per rank
    assert visible_files(output) == visible_files(baseline[0])
    assert sorted(p.name for p in (output / "logs").iterdir()) == ["comfyui-rank0.log", "comfyui-rank1.log"]
    assert watcher.problems == []


@pytest.mark.slow
def test_sigkill_after_first_checkpoint_then_resume_is_bit_identical(baseline, tmp_path):
    output = tmp_path / "run"
    folder = run_folder(output)
    watcher = IntegrityWatcher(output)
    watcher.start()
    with open(tmp_path / "killed.out", "w") as out, open(tmp_path / "killed.err", "w") as err:
        proc = start_cli(*train_args(TRAIN_API, output), stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + 300
            while not (folder / "checkpoint-00000002.pt").exists():
                assert proc.poll() is None, (tmp_path / "killed.err").read_text()
                assert time.monotonic() < deadline, "no checkpoint within 300 s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (output / LORA_NAME).exists()
    assert not (folder / "checkpoint-00000004.pt").exists()

    resumed = run_cli(*train_args(TRAIN_API, output, "--resume"))
    watcher.stop()
    assert resumed.returncode == 0, explain(resumed)
    assert f"resuming from {folder / 'checkpoint-00000002.pt'}" in resumed.stderr
    expected, got = load_file(str(baseline[0] / LORA_NAME)), load_file(str(output / LORA_NAME))
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    final = torch.load(folder / "checkpoint-00000004.pt", weights_only=True)
    reference = torch.load(run_folder(baseline[0]) / "checkpoint-00000004.pt", weights_only=True)
    assert all(torch.equal(final["params"][k], reference["params"][k]) for k in reference["params"])
    assert metrics_of(output)[-1]["step"] == STEPS
    assert watcher.checked > 0 and watcher.problems == []
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = dict(item.split("=", 1) for item in (Path("/proc") / str(pid) / "environ").read_text().split("\0")
                   if "=" in item)
    except OSError:
        return None
    return int(env["RANK"]) if "RANK" in env and "LEAPALIGN_LAUNCHED_BY_CLI" in env else None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker processes through /proc")
def test_a_killed_rank_stops_the_job_with_a_clear_message(tmp_path):
    output = tmp_path / "run"
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = start_cli(*train_args(TRAIN_API, output, "--gpus", "2", "--set", "Train LoRA.steps=200"),
                         stdout=out, stderr=err, env=cli_env())
        try:
            deadline = time.monotonic() + 300
            while not (run_folder(output) / "metrics.jsonl").exists():  # both ranks are in the training loop
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err").read_text()
                time.sleep(0.1)
            victims = [pid for pid in _descendants(proc.pid) if _rank_of(pid) == 1]
            assert len(victims) == 1
            os.kill(victims[0], signal.SIGKILL)
            code = proc.wait(timeout=120)  # no hang: the survivor is stopped
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = (tmp_path / "err").read_text()
    assert code == 1
    assert stderr.strip().splitlines()[-1] == "error: rank 1 was killed by signal SIGKILL; the job was stopped"
    assert "Traceback" not in stderr
    assert not [pid for pid in _descendants(proc.pid)]
    assert not (output / LORA_NAME).exists()


def test_subprocess_module_is_importable_without_comfyui():
    """``python -m trainer_cli.main`` (what torchrun starts) must not import ComfyUI before pinning a device."""
    code = ("import sys, trainer_cli.main, trainer_cli.train_command, trainer_cli.launch\n"
            "bad = [m for m in ('comfy', 'nodes', 'execution', 'folder_paths') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 0, proc.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_node_torchrun_launch_as_documented(baseline, tmp_path):
    """Two "machines" (two torchrun agents, one process each) joined through MASTER_ADDR/port."""
    output, port = tmp_path / "run", _free_port()
    torchrun = Path(sys.executable).parent / "torchrun"
    procs = []
    for node_rank in (0, 1):
        command = [str(torchrun), "--nnodes", "2", "--node-rank", str(node_rank), "--nproc-per-node", "1",
                   "--master-addr", "127.0.0.1", "--master-port", str(port),
                   "-m", "trainer_cli.main", *map(str, train_args(TRAIN_API, output))]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      cwd=REPO_ROOT, env=cli_env()))
    results = [proc.communicate(timeout=600) for proc in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, f"{out}\n{err}"
    assert "done in" in results[0][0] and results[1][0] == ""  # only rank 0 reports
    one, two = load_file(str(baseline[0] / LORA_NAME)), load_file(str(output / LORA_NAME))
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5
    assert visible_files(output) == visible_files(baseline[0])


@pytest.mark.slow
def test_ctrl_c_stops_at_the_next_step_and_keeps_the_checkpoints(tmp_path):
    output = tmp_path / "run"
    proc = subprocess.Popen(cli_command(*train_args(TRAIN_API, output, "--set", "Train LoRA.steps=40")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=cli_env())
    try:
        deadline = time.monotonic() + 300
        while not (run_folder(output) / "checkpoint-00000002.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    steps = [m["step"] for m in metrics_of(output)]
    assert 2 <= steps[-1] < 40 and steps == list(range(1, steps[-1] + 1))  # stopped early, each step once
    stop = f"checkpoint-{steps[-1]:08d}.pt"  # the stop wrote a checkpoint of the last completed step
    assert err.strip().splitlines()[-1] == (f"error: the run was stopped; its latest checkpoint is {stop}. Run the "
                                            "same command with --resume to continue from it")
    assert "Traceback" not in err
    assert (run_folder(output) / stop).is_file() and not (output / LORA_NAME).exists()


# --- runs never mix, nothing is lost ---------------------------------------------------------------

def _copy_of(baseline, tmp_path) -> Path:
    output = tmp_path / "run"
    shutil.copytree(baseline[0], output)
    return output


def _tensors_equal(a: Path, b: Path) -> bool:
    one, two = load_file(str(a)), load_file(str(b))
    return one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_corrupt_newest_checkpoint_falls_back_to_the_one_before(baseline, tmp_path):
    output = _copy_of(baseline, tmp_path)
    newest = run_folder(output) / "checkpoint-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    proc = run_cli(*train_args(TRAIN_API, output, "--resume"))
    assert proc.returncode == 0, explain(proc)
    assert f"warning: checkpoint {newest} is unreadable" in proc.stderr
    assert "using the one before it, checkpoint-00000002.pt" in proc.stderr
    assert f"resuming from {run_folder(output) / 'checkpoint-00000002.pt'}" in proc.stderr
    assert _tensors_equal(output / "tiny_lora_00002_.safetensors", baseline[0] / LORA_NAME)
    assert [m["step"] for m in metrics_of(output)] == [1, 2, 3, 4]  # steps 3 and 4 once, from the new run
    assert [m["loss"] for m in metrics_of(output)] == [m["loss"] for m in metrics_of(baseline[0])]


def test_resume_from_an_older_checkpoint_of_the_run_keeps_the_newer_aside(baseline, tmp_path):
    output = _copy_of(baseline, tmp_path)
    folder = run_folder(output)
    proc = run_cli(*train_args(TRAIN_API, output, "--resume", folder / "checkpoint-00000002.pt"))
    assert proc.returncode == 0, explain(proc)
    aside = [p for p in folder.iterdir() if p.name.startswith("superseded-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["checkpoint-00000004.pt", "metrics.jsonl"]
    assert f"moved to {aside[0]}" in proc.stderr
    assert _tensors_equal(output / "tiny_lora_00002_.safetensors", baseline[0] / LORA_NAME)
    assert [m["step"] for m in metrics_of(output)] == [1, 2, 3, 4]


def test_resume_applies_a_new_learning_rate_and_refuses_a_new_method(baseline, tmp_path):
    output = _copy_of(baseline, tmp_path)
    refused = run_cli(*train_args(TRAIN_API, output, "--resume", "--set", "Train LoRA.method=refl",
                                  "--set", "Train LoRA.steps=6"))
    assert refused.returncode == 1, explain(refused)
    assert ("fixes settings that this run changes: method (checkpoint: 'leapalign', now: 'refl')"
            in refused.stderr), explain(refused)
    assert [m["step"] for m in metrics_of(output)] == [1, 2, 3, 4]  # nothing trained, nothing written
    assert not (output / "tiny_lora_00002_.safetensors").exists()
    proc = run_cli(*train_args(TRAIN_API, output, "--resume", "--set", "Train LoRA.learning_rate=0.0005",
                               "--set", "Train LoRA.steps=6"))
    assert proc.returncode == 0, explain(proc)
    records = metrics_of(output)
    assert [m["step"] for m in records] == [1, 2, 3, 4, 5, 6]
    assert [m["lr"] for m in records] == [0.001] * 4 + [0.0005] * 2
    assert records[4]["settings_changed"] == {"lr": [0.001, 0.0005], "steps": [4, 6]}
    with safe_open(str(output / "tiny_lora_00002_.safetensors"), "pt") as handle:
        parameters = json.loads(handle.metadata()["leapalign_parameters"])
    assert parameters["lr"] == 0.0005
    assert parameters["setting_changes"] == [{"step": 4, "lr": [0.001, 0.0005], "steps": [4, 6]}]


def _wait_for(condition, proc, err_path, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, err_path.read_text()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_stop_by_signal_then_resume_gives_the_uninterrupted_lora(baseline, tmp_path, sig):
    """Stopped after step 1 (graceful signals write a checkpoint of the last completed step), resumed
    with the baseline's 4 steps: the same LoRA bit for bit, every step once in metrics.jsonl."""
    output = tmp_path / "run"
    err_path = tmp_path / "stopped.err"
    with open(tmp_path / "stopped.out", "w") as out, open(err_path, "w") as err:
        proc = start_cli(*train_args(TRAIN_API, output, "--set", "Train LoRA.steps=40",
                                     "--set", "Train LoRA.checkpoint_every=2" if sig == signal.SIGKILL else
                                     "Train LoRA.checkpoint_every=0"), stdout=out, stderr=err)
        try:
            metrics = run_folder(output) / "metrics.jsonl"
            if sig == signal.SIGKILL:
                _wait_for(lambda: (run_folder(output) / "checkpoint-00000002.pt").exists(), proc, err_path)
            else:
                _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, proc, err_path)
            proc.send_signal(sig)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    expected = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}[sig]
    assert code == expected, err_path.read_text()
    stopped_at = [m["step"] for m in metrics_of(output)]
    assert stopped_at == list(range(1, len(stopped_at) + 1))
    assert 1 <= len(stopped_at) <= 4 or sig == signal.SIGKILL
    if sig != signal.SIGKILL:
        assert (run_folder(output) / f"checkpoint-{stopped_at[-1]:08d}.pt").is_file()
        assert "Run the same command with --resume" in err_path.read_text()
    resumed = run_cli(*train_args(TRAIN_API, output, "--resume", "--set", "Train LoRA.steps=4"))
    assert resumed.returncode == 0, explain(resumed)
    assert _tensors_equal(output / LORA_NAME, baseline[0] / LORA_NAME)
    assert [m["step"] for m in metrics_of(output)] == [1, 2, 3, 4]
    assert [m["loss"] for m in metrics_of(output)] == [m["loss"] for m in metrics_of(baseline[0])]


def test_a_second_run_into_a_busy_folder_is_refused_and_the_first_is_intact(tmp_path):
    output = tmp_path / "run"
    err_path = tmp_path / "first.err"
    with open(tmp_path / "first.out", "w") as out, open(err_path, "w") as err:
        first = start_cli(*train_args(TRAIN_API, output, "--set", "Train LoRA.steps=40"), stdout=out, stderr=err)
        try:
            metrics = run_folder(output) / "metrics.jsonl"
            _wait_for(metrics.exists, first, err_path)
            second = run_cli(*train_args(TRAIN_API, output, "--set", "Train LoRA.run_name=other"))
            assert second.returncode == 2, explain(second)
            assert re.fullmatch(rf"error: {re.escape(str(output))} is in use by another run: pid {first.pid} on "
                                r"\S+ since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(.*train.*\); wait for it to "
                                r"finish, or choose another --output folder", second.stderr.strip()), second.stderr
            assert not (output / "leapalign" / "other").exists()
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=120) == 143, err_path.read_text()
        finally:
            if first.poll() is None:
                first.kill()
    steps = [m["step"] for m in metrics_of(output)]
    assert steps == list(range(1, len(steps) + 1))  # only the first run's steps, each once
