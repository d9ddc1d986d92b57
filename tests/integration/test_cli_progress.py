"""Progress display and metrics plumbing of the CLI, without ComfyUI: the metrics.jsonl follower, the
terminal line (steps/s, ETA, loss, reward), TensorBoard scalars, and the torchrun argument handling."""

from __future__ import annotations

import io
import json

import pytest

from trainer_cli.console import Console
from trainer_cli.launch import root_failure, worker_argv
from trainer_cli.progress import MetricsFollower, TensorBoardMirror, TrainingMonitor, format_duration


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_follower_reads_complete_lines_only_and_survives_replacement(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n')  # lines of an earlier (resumed) run are not reported again
    seen = []
    follower = MetricsFollower(path, seen.append)
    with path.open("a") as handle:
        handle.write('{"step": 2, "loss": 0.5}\n{"step": 3')
    follower.poll()
    assert seen == [{"step": 2, "loss": 0.5}]
    with path.open("a") as handle:
        handle.write(', "loss": 0.25}\nnot json\n')
    follower.poll()
    assert seen[-1] == {"step": 3, "loss": 0.25} and len(seen) == 2
    path.unlink()  # a fresh run deletes the file and starts a new one
    path.write_text('{"step": 1, "loss": 9}\n')
    follower.poll()
    assert seen[-1] == {"step": 1, "loss": 9}


def test_follower_thread_delivers_what_is_appended(tmp_path):
    path = tmp_path / "metrics.jsonl"
    seen = []
    follower = MetricsFollower(path, seen.append, interval_s=0.01).start()
    with path.open("a") as handle:
        for step in range(1, 6):
            handle.write(json.dumps({"step": step}) + "\n")
            handle.flush()
    follower.stop()
    assert [r["step"] for r in seen] == [1, 2, 3, 4, 5]


def test_monitor_line_has_rate_eta_and_metrics(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("trainer_cli.progress.time.monotonic", clock)
    console = Console()
    console.out = io.StringIO()
    monitor = TrainingMonitor(console, {"6": "6 'Train LoRA' (LeapAlignTrainLoRA)"}, min_interval_s=0)
    monitor.on_event("executing", {"node": "6"})
    monitor.on_event("progress", {"node": "6", "value": 10, "max": 110})
    clock.now += 20.0
    monitor.on_event("progress", {"node": "6", "value": 20, "max": 110})  # 10 steps in 20 s
    monitor.on_record({"step": 20, "loss": 0.123456, "reward": 0.75, "grad_norm": 1e-3, "skipped": False})
    line = monitor.line()
    assert line == ("6 'Train LoRA' (LeapAlignTrainLoRA)  step 20/110  2.0 s/step  ETA 3m00s  loss 0.1235  "
                    "reward 0.75  grad_norm 0.001")
    clock.now += 1.0
    monitor.on_event("progress", {"node": "6", "value": 30, "max": 110})  # 20 steps in 21 s
    assert "  1.1 s/step  ETA 1m24s  " in monitor.line()
    printed = console.out.getvalue().splitlines()
    assert printed[-1].startswith("6 'Train LoRA' (LeapAlignTrainLoRA)  step 30/110")


def test_monitor_throttles_when_not_a_terminal(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("trainer_cli.progress.time.monotonic", clock)
    console = Console()
    console.out = io.StringIO()
    monitor = TrainingMonitor(console, {}, min_interval_s=2.0)
    for value in range(1, 11):
        clock.now += 0.5
        monitor.on_event("progress", {"node": "3", "value": value, "max": 10})
    lines = console.out.getvalue().splitlines()
    assert lines[-1].startswith("node 3  step 10/10")  # the last update always shows
    assert 3 <= len(lines) <= 5


def test_monitor_keeps_training_metrics_on_the_training_node_and_dedupes_finished_bars(monkeypatch):
    """A later node (e.g. an evaluation sampling many times) shows neither the training node's loss nor
    one "done" line per sampler call."""
    clock = FakeClock()
    monkeypatch.setattr("trainer_cli.progress.time.monotonic", clock)
    console = Console()
    console.out = io.StringIO()
    monitor = TrainingMonitor(console, {}, min_interval_s=2.0)
    monitor.on_event("executing", {"node": "3"})
    monitor.on_event("progress", {"node": "3", "value": 1, "max": 2})
    monitor.on_record({"step": 1, "loss": 0.5, "reward": 0.25})
    clock.now += 0.1
    monitor.on_event("progress", {"node": "3", "value": 2, "max": 2})
    assert "loss 0.5" in console.out.getvalue().splitlines()[-1]
    monitor.on_event("executing", {"node": "7"})
    for _ in range(5):  # five sampler calls of 8 steps each, 0.1 s apart
        for value in range(1, 9):
            clock.now += 0.0125
            monitor.on_event("progress", {"node": "7", "value": value, "max": 8})
    lines = [line for line in console.out.getvalue().splitlines() if line.startswith("node 7")]
    assert len(lines) == 1 and lines[0].startswith("node 7  step 8/8")
    assert "loss" not in lines[0] and "reward" not in lines[0]


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3725, "1h02m"),
                                               (float("inf"), "?")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_tensorboard_mirror_writes_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mirror = TensorBoardMirror(tmp_path)
    assert mirror.enabled
    mirror.add({"step": 1, "loss": 0.5, "reward": 0.25, "skipped": False, "method": "leapalign", "rewards": [1, 2]})
    mirror.add({"step": 2, "loss": 0.4, "reward": float("nan")})
    mirror.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["loss", "reward"]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("loss")] == [(1, 0.5), (2, 0.4)]
    assert [e.step for e in events.Scalars("reward")] == [1]  # NaN is left out


def test_worker_argv_drops_only_gpus():
    argv = ["train", "w.json", "--gpus", "4", "--set", "6.steps=3", "--gpus=2", "--output", "x"]
    assert worker_argv(argv) == ["train", "w.json", "--set", "6.steps=3", "--output", "x"]


class _Failure:
    def __init__(self, exitcode, signal_name="<N/A>", data=None, timestamp=0):
        self.exitcode, self._signal, self.error_file_data, self.timestamp = exitcode, signal_name, data or {}, timestamp

    def signal_name(self):
        return self._signal


def test_root_failure_prefers_a_killed_rank_then_the_earliest_recorded():
    peers_broke = {0: _Failure(1, data={"message": "connection closed", "time": 5.0}), 1: _Failure(-9, "SIGKILL")}
    assert root_failure(peers_broke)[0] == 1
    recorded = {0: _Failure(1, data={"message": "b", "time": 7.5}), 1: _Failure(1, data={"message": "a", "time": 7.25}),
                2: _Failure(-15, "SIGTERM")}
    assert root_failure(recorded)[0] == 1
    assert root_failure({3: _Failure(1, timestamp=9), 2: _Failure(1, timestamp=9)})[0] == 2
    # rank 0 refused to start (diagnosed), rank 1 then lost its connection to it (unexpected), even if earlier
    cause_and_effect = {0: _Failure(1, data={"message": "already holds checkpoints", "time": 8.0, "expected": True}),
                        1: _Failure(1, data={"message": "Connection reset", "time": 7.9, "expected": False})}
    assert root_failure(cause_and_effect)[0] == 0
