"""What the editor shows and how fast the server trains: thread budget, live preview, run summary."""

from __future__ import annotations

import threading

import torch


def _in_worker_thread(fn):
    """Run ``fn`` on a fresh thread, as ComfyUI's prompt worker runs nodes; returns its result."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn()))
    thread.start()
    thread.join()
    return out["value"]


def test_small_cpu_model_trains_on_one_thread_and_restores(pack_import):
    threads = pack_import("nodes.cpu_threads")

    def run():
        torch.set_num_threads(2)
        with threads.threads_for(torch.nn.Linear(8, 8), "cpu") as inside:
            during = torch.get_num_threads()
        return inside, during, torch.get_num_threads()

    assert _in_worker_thread(run) == (1, 1, 2)


def test_large_or_accelerator_models_keep_the_server_threads(pack_import):
    threads = pack_import("nodes.cpu_threads")
    big = torch.nn.Linear(5000, 4001, device="meta")  # 20.0 M parameters, no memory
    assert not threads.wants_one_thread(big, "cpu")
    assert threads.wants_one_thread(torch.nn.Linear(5000, 3000, device="meta"), "cpu")
    assert not threads.wants_one_thread(torch.nn.Linear(8, 8), "cuda")

    def run():
        torch.set_num_threads(2)
        with threads.threads_for(big, "cpu") as inside:
            return inside, torch.get_num_threads()

    assert _in_worker_thread(run) == (2, 2)


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_live_view_shows_the_last_samples_and_curves_at_most_once_a_second(pack_import):
    live = pack_import("nodes.live_view")
    clock = _Clock()
    view = live.LiveView(total=5, node_id=None, every_s=1.0, clock=clock)
    pictures = torch.zeros(3, 3, 16, 16)
    pictures[1] = 1.0  # the second sample is white
    decode = view.watch(lambda latent: pictures.clone().requires_grad_(True))
    assert decode(torch.zeros(3, 16, 2, 2)).requires_grad  # what the loss sees is untouched
    kind, image, max_size = view.update(1, {"reward": -2.0, "loss": 4.0})
    assert (kind, max_size) == ("JPEG", 512)
    tile = live.TILE
    assert image.size == (384, tile + 4 + live.CURVE_HEIGHT + 22)  # 384: the curves' minimum width
    left = (384 - (3 * tile + 2 * 2)) // 2  # three tiles 2 px apart, centred
    assert max(image.getpixel((left + tile // 2, tile // 2))) < 16  # JPEG: black stays near 0
    assert min(image.getpixel((left + tile + 2 + tile // 2, tile // 2))) > 240
    clock.now += 0.5
    assert view.update(2, {"reward": -1.5, "loss": float("nan")}) is None  # throttled; NaN loss not recorded
    clock.now += 0.6
    assert view.update(3, {"reward": -1.0, "loss": 2.0}) is not None
    assert view.update(5, {"reward": -0.5, "loss": 1.0}) is not None  # the last step always shows
    assert view.rewards == [-2.0, -1.5, -1.0, -0.5] and view.losses == [4.0, 2.0, 1.0]
    assert live.status_line(5, 5, view.rewards, view.losses) == "step 5/5  reward -0.5 (start -2)  loss 1"


def test_scores_and_run_summary_are_markdown_tables(pack_import):
    from leapalign.demo.evaluate import DigitsScore
    from leapalign.demo.report import markdown_scores

    metrics_nodes = pack_import("nodes.metrics_nodes")
    fields = {"samples": 10, "judge_accuracy_per_digit": []}
    before = DigitsScore(**{**fields, "judge_accuracy": 0.4, "reward_accuracy": 0.5, "mean_reward": -2.5})
    after = DigitsScore(**{**fields, "judge_accuracy": 0.95, "reward_accuracy": 1.0, "mean_reward": -0.25})
    table = markdown_scores(before, after).splitlines()
    assert table[2] == "| judge accuracy | 40.0% | 95.0% | +55.0pt |"
    assert table[4] == "| mean reward (log p) | -2.500 | -0.250 | +2.250 |"
    history = [{"step": 1, "reward": -2.0, "loss": 3.0}, {"step": 2, "reward": float("nan")},
               {"step": 3, "reward": -0.5, "loss": 1.0}]
    summary = metrics_nodes.run_summary({"history": history, "method": "leapalign", "run_dir": "/r"}, "a/b.safetensors")
    assert summary.splitlines()[0] == "**leapalign**: 3 steps"
    assert "| reward | -2 | -0.5 | +1.5 |" in summary and "| loss | 3 | 1 | -2 |" in summary
    assert "- LoRA: `a/b.safetensors`" in summary and "- run folder: `/r`" in summary


def test_training_node_reports_live_and_the_summary_names_the_lora(comfy, pack_import, monkeypatch):
    """Through ComfyUI's executor: progress text every preview, a preview on the last step, a summary."""
    import json
    from pathlib import Path

    import folder_paths

    from trainer_cli.comfy_runtime import execute_prompt

    live = pack_import("nodes.live_view")
    previews = []
    original = live.LiveView.update

    def recording_update(self, step, metrics):
        preview = original(self, step, metrics)
        previews.append((step, preview))
        return preview

    monkeypatch.setattr(live.LiveView, "update", recording_update)
    steps = 3
    graph = {
        "1": {"class_type": "TinyFluxModelLoader", "inputs": {"seed": 0}},
        "2": {"class_type": "TinyCLIPLoader", "inputs": {"seed": 0}},
        "3": {"class_type": "TinyVAELoader", "inputs": {"seed": 0, "weight_std": 0.2}},
        "4": {"class_type": "LeapAlignRewardLoader",
              "inputs": {"kind": "builtin_color_target", "model_file": "(none: built-in reward)",
                         "precision": "float32", "target_color": "1.0, 0.0, 0.0"}},
        "5": {"class_type": "LeapAlignPromptList", "inputs": {"text": "a red apple", "file": ""}},
        # no method block connected: the training node trains LeapAlign with the released defaults
        "6": {"class_type": "LeapAlignTrain", "inputs": {
            "model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0], "reward": ["4", 0], "prompts": ["5", 0],
            "optimizer": ["10", 0], "lora_settings": ["11", 0], "steps": steps, "batch_size": 2,
            "grad_accumulation": 1, "seed": 0, "width": 32, "height": 32, "sampling_steps": 4, "scheduler": "simple",
            "guidance": 3.5, "checkpoint_every": 0, "run_name": "editor_view", "resume": False}},
        "10": {"class_type": "LeapAlignOptimizer", "inputs": {"learning_rate": 0.05, "weight_decay": 0.0,
                                                              "grad_clip": 1.0, "ema_decay": 0.0}},
        "11": {"class_type": "LeapAlignLoRASettings", "inputs": {"lora_rank": 2, "lora_alpha": 2.0,
                                                                 "lora_targets": "attention"}},
        "7": {"class_type": "LeapAlignSaveLoRA", "inputs": {"lora": ["6", 1], "filename_prefix": "tests/editor_view",
                                                             "dtype": "fp32"}},
        "8": {"class_type": "LeapAlignPlotMetrics", "inputs": {"metrics": ["6", 2], "smoothing": 1,
                                                               "lora_name": ["7", 0]}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["8", 1]}},
    }
    events = []
    result = execute_prompt(graph, on_event=lambda event, data: events.append((event, data)))
    assert result.success, result.error
    texts = [data["text"] for event, data in events if event == "progress_text" and data["node"] == "6"]
    assert texts and texts[0].startswith("step 1/3  reward ")
    assert texts[-1].startswith("step 3/3  reward ")
    kind, image, _ = previews[-1][1]
    assert previews[-1][0] == steps and kind == "JPEG" and image.height > live.TILE
    metrics = Path(folder_paths.get_output_directory()) / "leapalign" / "editor_view" / "metrics.jsonl"
    rewards = [json.loads(line)["reward"] for line in metrics.read_text().splitlines()]
    assert len(rewards) == steps
    assert f"reward {rewards[-1]:.4g} (start {rewards[0]:.4g})" in texts[-1]
    summary = result.outputs["9"]["text"][0]
    lora_name = result.outputs["7"]["text"][0].removeprefix("saved ")
    assert summary.startswith("**leapalign**: 3 steps") and f"- LoRA: `{lora_name}`" in summary
    assert f"| reward | {rewards[0]:.4g} | {rewards[-1]:.4g} |" in summary
