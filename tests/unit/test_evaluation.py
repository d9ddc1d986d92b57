"""The evaluation core: statistics with known answers, the sampling/scoring loop, its files, and
resuming after a SIGKILL without sampling or scoring anything twice."""

import json
import math
import signal
import subprocess
import sys
import time

import eval_toys
import pytest
import torch
from PIL import Image

from leapalign.evaluation import EvalStore, EvalStoreError, Metric, run_evaluation, summarize, write_reports
from leapalign.evaluation.stats import mean_and_se
from trainer_cli.locate import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


def test_standard_errors_on_a_case_with_a_known_answer():
    # 4 prompts x 2 images. Base prompt means 1, 2, 3, 4 (images mean +- 0.5); the variant adds
    # 0.5, 0.5, 1.5, 1.5 per prompt. Prompt means are the observations:
    #   base: mean 2.5, sd(1, 2, 3, 4) = sqrt(5/3), se = sqrt(5/3) / 2 = 0.645497...
    #   variant - base: mean 1.0, sd(.5, .5, 1.5, 1.5) = sqrt(1/3), se = sqrt(1/3) / 2 = 0.288675...
    #   variant: prompt means 1.5, 2.5, 4.5, 5.5: mean 3.5, sd = sqrt(10/3), se = sqrt(10/3) / 2
    scores = {}
    for p, (mean, lift) in enumerate([(1, 0.5), (2, 0.5), (3, 1.5), (4, 1.5)]):
        for s, wobble in enumerate((-0.5, 0.5)):
            scores[("base", p, s, "r")] = mean + wobble
            scores[("lora", p, s, "r")] = mean + lift + wobble * 3  # within-prompt noise does not enter
    base, lora = summarize(scores, ["base", "lora"], ["r"])
    assert (base.images, base.prompts, base.diff) == (8, 4, None)
    assert base.mean == pytest.approx(2.5) and base.se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert lora.mean == pytest.approx(3.5) and lora.se == pytest.approx(math.sqrt(10 / 3) / 2)
    assert lora.diff == pytest.approx(1.0) and lora.diff_se == pytest.approx(math.sqrt(1 / 3) / 2)
    # A constant improvement has zero paired standard error, however spread the prompts are.
    base_only = {key: value for key, value in scores.items() if key[0] == "base"}
    shifted = {("lora", *key[1:]): value + 2.0 for key, value in base_only.items()}
    rows = summarize({**base_only, **shifted}, ["base", "lora"], ["r"])
    assert rows[1].diff == pytest.approx(2.0) and rows[1].diff_se == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(mean_and_se([3.0])[1]) and mean_and_se([1.0, 3.0]) == (2.0, 1.0)


def test_evaluation_writes_every_image_and_score_once(tmp_path):
    plan = eval_toys.plan()
    store = EvalStore(tmp_path / "eval").open(plan.record())
    metrics = eval_toys.metrics()
    progress = []
    counts = run_evaluation(plan, eval_toys.sampler(), metrics, store, lambda d, t, m: progress.append((d, t)))
    cells = len(plan.variants) * len(plan.prompts)
    n = cells * plan.images_per_prompt
    assert (counts.sampled, counts.images, counts.scores) == (cells, n, n * len(metrics))
    assert progress[-1] == (cells, cells) and len(progress) == cells
    lines = (tmp_path / "eval" / "scores.jsonl").read_text().splitlines()
    keys = [(r["variant"], r["prompt_index"], r["sample"], r["metric"]) for r in map(json.loads, lines)]
    assert len(keys) == len(set(keys)) == n * len(metrics)
    assert len(list((tmp_path / "eval" / "images").rglob("*.png"))) == n
    # The stored scores are those of the images as sampled (one seed per prompt, a batch of n).
    images = eval_toys.sampler()("lora", plan.prompts[2], plan.images_per_prompt, plan.seed)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    brightness = (images * luma).sum(dim=1).mean(dim=(1, 2))
    for s in range(plan.images_per_prompt):
        assert store.scores[("lora", 2, s, "builtin_brightness")] == pytest.approx(float(brightness[s]), abs=1e-6)
    # A second call finds everything: nothing sampled, written or scored.
    again = run_evaluation(plan, eval_toys.sampler(), metrics, EvalStore(tmp_path / "eval").open(plan.record()))
    assert (again.sampled, again.images, again.scores) == (0, 0, 0)
    rows, table = write_reports(store, plan, [m.name for m in metrics])
    assert len(rows) == 4 and "builtin_color_target" in table and "vs base" in table
    csv_lines = (tmp_path / "eval" / "scores.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + n and csv_lines[0].endswith("builtin_brightness,builtin_color_target")
    with Image.open(tmp_path / "eval" / "grid.png") as grid:
        assert grid.width > 2 * 3 * 160 and grid.height > 5 * 160


def test_another_evaluation_in_the_same_folder_is_refused(tmp_path):
    plan = eval_toys.plan()
    EvalStore(tmp_path).open(plan.record())
    plan.seed = 12
    with pytest.raises(EvalStoreError, match="different seed"):
        EvalStore(tmp_path).open(plan.record())


def counting(metrics, calls):
    def wrap(metric):
        def score(images, prompts):
            calls.append((metric.name, images.shape[0]))
            return metric.score(images, prompts)
        return Metric(metric.name, score)
    return [wrap(m) for m in metrics]


def test_killed_and_resumed_scores_nothing_twice(tmp_path):
    folder = tmp_path / "eval"
    scores_file = folder / "scores.jsonl"
    code = f"import sys; sys.path.insert(0, {str(REPO_ROOT / 'tests' / 'unit')!r}); import eval_toys; " \
           f"eval_toys.main({str(folder)!r}, 0.03)"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if scores_file.exists() and len(scores_file.read_text().splitlines()) >= 12:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the evaluation finished before it could be killed"
    before = scores_file.read_bytes()
    with open(scores_file, "ab") as handle:  # as if the kill had cut a line short
        handle.write(b'{"variant": "base", "prompt_ind')
    plan, calls = eval_toys.plan(), []
    store = EvalStore(folder).open(plan.record())
    assert scores_file.read_bytes() == before  # the cut line is gone
    done = dict(store.scores)
    metrics = counting(eval_toys.metrics(), calls)
    counts = run_evaluation(plan, eval_toys.sampler(), metrics, store)
    total = len(plan.variants) * len(plan.prompts) * plan.images_per_prompt * len(metrics)
    assert 12 <= len(done) < total
    assert counts.scores == sum(n for _, n in calls) == total - len(done)
    keys = [tuple(r[k] for k in ("variant", "prompt_index", "sample", "metric"))
            for r in map(json.loads, scores_file.read_text().splitlines())]
    assert len(keys) == len(set(keys)) == total
    # Scores written before the kill equal those of an uninterrupted run.
    fresh = EvalStore(tmp_path / "fresh").open(plan.record())
    run_evaluation(plan, eval_toys.sampler(), eval_toys.metrics(), fresh)
    for key, value in store.scores.items():
        assert value == pytest.approx(fresh.scores[key], abs=1e-6), key
    assert len(list((folder / "images").rglob("*.png"))) == total // len(metrics)
    assert torch.isfinite(torch.tensor(list(store.scores.values()))).all()


def test_processes_share_the_folder_by_prompts(tmp_path):
    plan, metrics = eval_toys.plan(), eval_toys.metrics()
    stores = [EvalStore(tmp_path / "shared", rank=r).open(plan.record()) for r in (0, 1)]
    for rank, store in enumerate(stores):  # what two GPUs do, one after the other here
        run_evaluation(plan, eval_toys.sampler(), metrics, store, prompt_indices=range(rank, len(plan.prompts), 2))
    assert sorted(p.name for p in (tmp_path / "shared").glob("scores*.jsonl")) == ["scores.jsonl", "scores.rank1.jsonl"]
    merged = stores[0].reload()
    single = EvalStore(tmp_path / "single").open(plan.record())
    run_evaluation(plan, eval_toys.sampler(), metrics, single)
    assert merged.keys() == single.scores.keys()
    assert all(merged[k] == pytest.approx(v, abs=1e-6) for k, v in single.scores.items())
    # One process resuming the two-process folder finds everything done.
    again = run_evaluation(plan, eval_toys.sampler(), metrics, EvalStore(tmp_path / "shared").open(plan.record()))
    assert (again.sampled, again.scores) == (0, 0)
