"""``leapalign-comfy eval`` end to end (pinned ComfyUI, CPU, subprocesses): the digits world's numbers
equal those the demo's own evaluation prints for the same seeds, and a tiny Flux is scored by two
rewards, resumably."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from cli_harness import FIXTURE_NODES, LORA_NAME, TRAIN_API, explain, run_cli, train_args
from PIL import Image

from leapalign.demo.evaluate import EVAL_SEED
from trainer_cli.locate import REPO_ROOT

pytestmark = pytest.mark.comfy
DEMO = REPO_ROOT / "workflows" / "demo_digits.json"
SAMPLES = 6


def summary(folder) -> dict[tuple[str, str], dict]:
    with open(folder / "summary.csv", newline="") as handle:
        return {(row["metric"], row["variant"]): row for row in csv.DictReader(handle)}


@pytest.mark.slow  # about a minute on 2 shared cores: a short demo training plus two evaluations
def test_eval_on_the_digits_world_reproduces_the_demo_numbers(tmp_path):
    train = tmp_path / "train"
    proc = run_cli("train", DEMO, "--output", train, "--cpu", "--no-tensorboard",
                   "--set", "Train LoRA (LeapAlign).steps=3",
                   "--set", f"Before / after on held-out noises.samples_per_digit={SAMPLES}")
    assert proc.returncode == 0, explain(proc)
    demo = json.loads(next(train.glob("digits_before_after_*_.json")).read_text())
    lora = next((train / "leapalign").glob("digits_leapalign_*_.safetensors"))
    out = tmp_path / "eval"
    proc = run_cli("eval", DEMO, "--lora", lora, "--images-per-prompt", SAMPLES, "--seed", EVAL_SEED,
                   "--output", out, "--cpu")
    assert proc.returncode == 0, explain(proc)
    rows = summary(out / "eval")
    # The demo's "before" is the world's model, its "after" the trained model (its LoRA reloads identically).
    for label, variant in (("before", "base"), ("after", lora.name)):
        scores = demo[label]
        assert float(rows[("digits-judge accuracy", variant)]["mean"]) == pytest.approx(scores["judge_accuracy"], abs=1e-6)
        assert float(rows[("digits-reward accuracy", variant)]["mean"]) == pytest.approx(scores["reward_accuracy"], abs=1e-6)
        assert float(rows[("digits-reward", variant)]["mean"]) == pytest.approx(scores["mean_reward"], abs=1e-4)
        assert int(rows[("digits-judge accuracy", variant)]["images"]) == 10 * SAMPLES
    gain = demo["after"]["judge_accuracy"] - demo["before"]["judge_accuracy"]
    assert float(rows[("digits-judge accuracy", lora.name)]["diff_vs_base"]) == pytest.approx(gain, abs=1e-6)
    assert "digits-judge accuracy" in proc.stdout and "eval 20/20" in proc.stdout


@pytest.mark.slow  # five ComfyUI boots in subprocesses (train, eval, eval again, 2 x eval): 1-2 minutes
def test_eval_on_tiny_flux_with_two_rewards_resumes(tmp_path):
    train = tmp_path / "train"
    proc = run_cli(*train_args(TRAIN_API, train, "--no-tensorboard"))
    assert proc.returncode == 0, explain(proc)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\na blue car\na green tree\n")
    out = tmp_path / "eval"
    args = ["eval", TRAIN_API, "--custom-nodes", FIXTURE_NODES, "--prompts", prompts, "--lora", train / LORA_NAME,
            "--reward", "builtin_color_target", "--images-per-prompt", "2", "--seed", "5", "--output", out]
    proc = run_cli(*args)
    assert proc.returncode == 0, explain(proc)
    folder = out / "eval"
    rows = summary(folder)
    assert set(rows) == {(m, v) for m in ("builtin_brightness", "builtin_color_target") for v in ("base", LORA_NAME)}
    assert all(int(row["images"]) == 6 and int(row["prompts"]) == 3 for row in rows.values())
    # 32x32 pictures (the training node's width/height); scores are those of the saved pictures (8-bit).
    with open(folder / "scores.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 12
    for row in table:
        pixels = np.asarray(Image.open(folder / row["image"]).convert("RGB"), dtype=np.float64) / 255
        assert pixels.shape == (32, 32, 3)
        luma = (pixels @ np.array([0.299, 0.587, 0.114])).mean()
        assert float(row["builtin_brightness"]) == pytest.approx(luma, abs=3e-3)
    lines = (folder / "scores.jsonl").read_text().splitlines()
    stamps = {p: p.stat().st_mtime_ns for p in (folder / "images").rglob("*.png")}
    assert len(lines) == 24 and len(stamps) == 12
    again = run_cli(*args)  # everything is there: nothing sampled, written or scored again
    assert again.returncode == 0, explain(again)
    assert (folder / "scores.jsonl").read_text().splitlines() == lines
    assert {p: p.stat().st_mtime_ns for p in (folder / "images").rglob("*.png")} == stamps
    assert summary(folder) == rows
    # Two processes (gloo on CPU, as `--gpus 2` without GPUs) split the prompts and give the same scores.
    split = tmp_path / "eval2"
    two = run_cli(*[a if a != out else split for a in args], "--gpus", "2")
    assert two.returncode == 0, explain(two)
    assert sorted(p.name for p in (split / "eval").glob("scores*.jsonl")) == ["scores.jsonl", "scores.rank1.jsonl"]
    with open(split / "eval" / "scores.csv", newline="") as handle:
        assert [{k: v for k, v in r.items()} for r in csv.DictReader(handle)] == table
    assert "builtin_color_target" in two.stdout and "[rank 1] eval" in two.stdout
