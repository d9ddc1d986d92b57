"""Reward and loss curves of a training run as an IMAGE (and a preview in the node), like ComfyUI's loss graph."""

from __future__ import annotations

import math

import numpy as np
import torch
from comfy_api.latest import io

from . import sockets
from .common import CATEGORY, node_error


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for row in history:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(int(row.get("step", len(steps) + 1)))
            values.append(float(value))
    return steps, values


def render_metrics(history: list[dict], title: str = "", smoothing: int = 1) -> np.ndarray:
    """RGB uint8 array with reward (left) and loss (right) against the optimizer step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100)
    canvas = FigureCanvasAgg(fig)
    for index, (key, color) in enumerate((("reward", "tab:green"), ("loss", "tab:blue"))):
        ax = fig.add_subplot(1, 2, index + 1)
        steps, values = _series(history, key)
        ax.plot(steps, values, color=color, alpha=0.35 if smoothing > 1 else 1.0, linewidth=1)
        if smoothing > 1 and len(values) >= smoothing:
            kernel = np.ones(smoothing) / smoothing
            ax.plot(steps[smoothing - 1:], np.convolve(values, kernel, mode="valid"), color=color, linewidth=2)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def run_summary(metrics: dict, lora_name: str = "") -> str:
    """The run in a few Markdown lines: method, steps, reward and loss at the start and the end, files.

    Markdown because the stock "Preview as Text" node (``PreviewAny``) renders its text as Markdown; it
    reads as plain text too.
    """
    history = metrics.get("history") or []
    rewards, losses = _series(history, "reward")[1], _series(history, "loss")[1]
    lines = [f"**{metrics.get('method', 'training')}**: {len(history)} steps", ""]
    if rewards:
        lines += ["| | first step | last step | change |", "|---|---|---|---|",
                  f"| reward | {rewards[0]:.4g} | {rewards[-1]:.4g} | {rewards[-1] - rewards[0]:+.4g} |"]
        if losses:
            lines.append(f"| loss | {losses[0]:.4g} | {losses[-1]:.4g} | {losses[-1] - losses[0]:+.4g} |")
        lines.append("")
    if lora_name:
        lines.append(f"- LoRA: `{lora_name}`")
    if metrics.get("run_dir"):
        lines.append(f"- run folder: `{metrics['run_dir']}`")
    return "\n".join(lines).strip() + "\n"


class LeapAlignPlotMetrics(io.ComfyNode):
    """Plots reward and loss per step of a LeapAlign training run."""

    DISPLAY_NAME = "LeapAlign Plot Metrics"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LeapAlignPlotMetrics", display_name=cls.DISPLAY_NAME, category=CATEGORY, is_output_node=True,
            description="Reward and loss curves of a LeapAlign training run, and a summary of the run.",
            inputs=[sockets.Metrics.Input("metrics", tooltip="The training node's metrics output."),
                    io.Int.Input("smoothing", default=1, min=1, max=1000,
                                 tooltip="Moving-average window drawn over the raw curve."),
                    io.String.Input("lora_name", optional=True, force_input=True,
                                    tooltip="The saved LoRA's name (Save LoRA's output), named in the summary.")],
            outputs=[io.Image.Output("plot", display_name="plot", tooltip="Reward and loss per optimizer step."),
                     io.String.Output("summary", display_name="summary", tooltip=(
                         "Steps, reward and loss at the start and the end, LoRA file and run folder (Markdown); "
                         "connect it to Preview as Text to read it in the editor."))])

    @classmethod
    def execute(cls, metrics: dict, smoothing: int = 1, lora_name: str = "") -> io.NodeOutput:
        history = metrics.get("history") or []
        if not history:
            raise node_error(cls.DISPLAY_NAME, "the metrics hold no training steps")
        image = render_metrics(history, title=f"{metrics.get('method', '')} ({len(history)} steps)", smoothing=smoothing)
        tensor = torch.from_numpy(image.astype(np.float32) / 255.0)[None]
        summary = run_summary(metrics, lora_name or "")
        return io.NodeOutput(tensor, summary, ui={"images": [_save_preview(image)], "text": [summary]})


def _save_preview(image: np.ndarray) -> dict:
    """Write a PNG into ComfyUI's temp folder so the node shows the plot (as PreviewImage does)."""
    import uuid
    from pathlib import Path

    import folder_paths
    from PIL import Image

    folder = Path(folder_paths.get_temp_directory())
    folder.mkdir(parents=True, exist_ok=True)
    name = f"leapalign_metrics_{uuid.uuid4().hex[:12]}.png"
    Image.fromarray(image).save(folder / name)
    return {"filename": name, "subfolder": "", "type": "temp"}


NODES = [LeapAlignPlotMetrics]
