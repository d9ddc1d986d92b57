"""What the training node shows in the editor while it trains: the current samples and reward/loss so far.

ComfyUI's ``ProgressBar`` carries an optional preview image (``("JPEG", PIL image, max size)``), which
the server sends to the editor and the stock frontend draws on the executing node, as KSampler's
latent previews are drawn. ``LiveView`` wraps the training decoder to keep the last decoded batch (the
pictures the reward just scored), and on each optimizer step composes them with small reward and loss
curves into that preview, at most once per ``every_s`` seconds plus the last step (building it costs
milliseconds, but a big batch of 1024-pixel pictures should not be converted every step). The same
numbers go to the node's progress text, which the frontend shows under the node's title.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

PREVIEW_FORMAT = "JPEG"
PREVIEW_MAX_SIZE = 512
MAX_SAMPLES = 8
TILE = 96
CURVE_HEIGHT = 72
COLORS = {"reward": (44, 160, 44), "loss": (31, 119, 180)}


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def status_line(step: int, total: int, rewards: list[float], losses: list[float]) -> str:
    """``step 12/150  reward -1.234 (start -2.950)  loss 0.456``: what the run has done so far."""
    parts = [f"step {step}/{total}"]
    if rewards:
        parts.append(f"reward {rewards[-1]:.4g} (start {rewards[0]:.4g})")
    if losses:
        parts.append(f"loss {losses[-1]:.4g}")
    return "  ".join(parts)


def _tiles(images: torch.Tensor):
    """Up to ``MAX_SAMPLES`` pictures ``[B, 3, H, W]`` in [0, 1] side by side, each ``TILE`` pixels high."""
    from PIL import Image

    pictures = images[:MAX_SAMPLES].clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    tiles = []
    for array in pictures:
        tile = Image.fromarray(array, "RGB")
        width = max(1, round(tile.width * TILE / tile.height))
        tiles.append(tile.resize((width, TILE), Image.NEAREST if tile.height < TILE else Image.BILINEAR))
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 2 * (len(tiles) - 1), TILE), (32, 32, 32))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + 2
    return strip


def _draw_curve(draw, box: tuple[int, int, int, int], values: list[float], color) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline=(90, 90, 90))
    if len(values) < 2:
        return
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    points = [(left + 2 + (right - left - 4) * i / (len(values) - 1),
               bottom - 2 - (bottom - top - 4) * (v - low) / span) for i, v in enumerate(values)]
    draw.line(points, fill=color, width=2)


def preview_image(images: torch.Tensor | None, rewards: list[float], losses: list[float], line: str):
    """The preview: sample strip on top, reward (green) and loss (blue) curves and the status line below."""
    from PIL import Image, ImageDraw

    strip = _tiles(images) if images is not None and images.ndim == 4 and images.shape[1] == 3 else None
    width = max(strip.width if strip is not None else 0, 384)
    top = strip.height + 4 if strip is not None else 0
    canvas = Image.new("RGB", (width, top + CURVE_HEIGHT + 22), (24, 24, 24))
    if strip is not None:
        canvas.paste(strip, ((width - strip.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    half = width // 2
    _draw_curve(draw, (0, top, half - 3, top + CURVE_HEIGHT), rewards, COLORS["reward"])
    _draw_curve(draw, (half + 2, top, width - 1, top + CURVE_HEIGHT), losses, COLORS["loss"])
    draw.text((4, top + CURVE_HEIGHT + 5), line, fill=(230, 230, 230))
    return canvas


class LiveView:
    """Keeps the last decoded samples and the reward/loss history; builds the node's live preview."""

    def __init__(self, total: int, node_id: str | None = None, every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.node_id = node_id
        self.every_s = every_s
        self.clock = clock
        self.images: torch.Tensor | None = None
        self.rewards: list[float] = []
        self.losses: list[float] = []
        self._last_shown: float | None = None

    def watch(self, decoder: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """``decoder`` unchanged, except that the pictures it returns are also kept (detached, on their device:
        copying them to the CPU every step would stall a GPU; ``update`` copies them when a preview is due)."""

        def decode(latent: torch.Tensor) -> torch.Tensor:
            images = decoder(latent)
            if isinstance(images, torch.Tensor):
                self.images = images[:MAX_SAMPLES].detach()
            return images

        return decode

    def update(self, step: int, metrics: dict):
        """Record the step's numbers; return a ProgressBar preview tuple when one is due, else None."""
        for key, series in (("reward", self.rewards), ("loss", self.losses)):
            value = _finite(metrics.get(key))
            if value is not None:
                series.append(value)
        line = status_line(step, self.total, self.rewards, self.losses)
        now = self.clock()
        if step < self.total and self._last_shown is not None and now - self._last_shown < self.every_s:
            return None
        self._last_shown = now
        self._send_text(line)
        images = self.images.float().cpu() if self.images is not None else None
        return (PREVIEW_FORMAT, preview_image(images, self.rewards, self.losses, line), PREVIEW_MAX_SIZE)

    def _send_text(self, line: str) -> None:
        """The status line as the node's progress text (shown by the frontend; a no-op headless)."""
        if self.node_id is None:
            return
        try:
            from server import PromptServer

            instance = PromptServer.instance
            instance.send_progress_text(line, self.node_id, getattr(instance, "client_id", None))
        except (ImportError, AttributeError):
            return
