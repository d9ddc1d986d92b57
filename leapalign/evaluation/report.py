"""What a person reads: the summary table, the summary and per-image CSVs, and an image grid."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence

from .loop import EvalPlan
from .stats import SummaryRow
from .store import EvalStore, ScoreKey


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def summary_table(rows: Sequence[SummaryRow]) -> str:
    """Fixed-width text: per metric, each variant's mean ± standard error, and its paired difference to the base."""
    metric_width = max([len(r.metric) for r in rows] + [6])
    variant_width = max([len(r.variant) for r in rows] + [7])
    head = (f"{'metric':<{metric_width}}  {'variant':<{variant_width}}  {'images':>6}  {'mean':>10}  {'± se':>8}"
            f"  {'vs base':>10}  {'± se':>8}")
    lines = [head, "-" * len(head)]
    previous = None
    for r in rows:
        metric = r.metric if r.metric != previous else ""
        previous = r.metric
        lines.append(f"{metric:<{metric_width}}  {r.variant:<{variant_width}}  {r.images:>6}  {_number(r.mean):>10}"
                     f"  {_number(r.se):>8}  {_number(r.diff, signed=True):>10}  {_number(r.diff_se):>8}")
    lines.append("standard errors over prompts (each prompt's mean is one observation); "
                 "'vs base' pairs the same prompts and seeds")
    return "\n".join(lines)


def _csv(rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def summary_csv(rows: Sequence[SummaryRow]) -> str:
    def cell(value):
        return "" if value is None else f"{value:.6g}"

    return _csv([["metric", "variant", "images", "prompts", "mean", "se", "diff_vs_base", "diff_se"]]
                + [[r.metric, r.variant, r.images, r.prompts, cell(r.mean), cell(r.se), cell(r.diff), cell(r.diff_se)]
                   for r in rows])


def scores_csv(scores: Mapping[ScoreKey, float], plan: EvalPlan, metrics: Sequence[str], store: EvalStore) -> str:
    """One row per image: variant, prompt, sample, seed, file, then one column per metric."""
    rows = [["variant", "prompt_index", "prompt", "sample", "seed", "image", *metrics]]
    for variant in plan.variants:
        for index, prompt in enumerate(plan.prompts):
            for s in range(plan.images_per_prompt):
                values = [scores.get((variant, index, s, m)) for m in metrics]
                if all(v is None for v in values):
                    continue
                image = store.image_path(variant, index, s).relative_to(store.folder).as_posix()
                rows.append([variant, index, prompt, s, plan.seed, image,
                             *["" if v is None else f"{v:.6g}" for v in values]])
    return _csv(rows)


def image_grid(store: EvalStore, plan: EvalPlan, max_prompts: int = 8, max_images: int = 4, cell: int = 160):
    """A PIL image: one row per prompt (the first ``max_prompts``), one column group per variant."""
    from PIL import Image, ImageDraw, ImageFont

    prompts = plan.prompts[:max_prompts]
    columns = min(max_images, plan.images_per_prompt)
    pad, label, header = 4, 220, 24
    group = columns * (cell + pad) + 3 * pad
    canvas = Image.new("RGB", (label + group * len(plan.variants), header + len(prompts) * (cell + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for g, variant in enumerate(plan.variants):
        x0 = label + g * group
        draw.text((x0, 6), variant[:40], fill="black", font=font)
        for r in range(len(prompts)):
            for c in range(columns):
                path = store.image_path(variant, r, c)
                if not path.is_file():
                    continue
                with Image.open(path) as image:
                    tile = image.convert("RGB")
                resample = Image.NEAREST if max(tile.size) < cell else Image.BICUBIC
                canvas.paste(tile.resize((cell, cell), resample), (x0 + c * (cell + pad), header + r * (cell + pad)))
    for r, prompt in enumerate(prompts):
        draw.text((pad, header + r * (cell + pad) + cell // 2), prompt[:34], fill="black", font=font)
    return canvas


def write_reports(store: EvalStore, plan: EvalPlan, metrics: Sequence[str]) -> tuple[list[SummaryRow], str]:
    """Write ``summary.csv``, ``scores.csv``, ``table.txt`` and ``grid.png``; return the rows and the table."""
    from ..atomic import atomic_write_bytes, atomic_write_text
    from .stats import summarize

    rows = summarize(store.scores, plan.variants, metrics)
    table = summary_table(rows)
    atomic_write_text(store.folder / "summary.csv", summary_csv(rows))
    atomic_write_text(store.folder / "scores.csv", scores_csv(store.scores, plan, metrics, store))
    atomic_write_text(store.folder / "table.txt", table + "\n")
    buffer = io.BytesIO()
    image_grid(store, plan).save(buffer, format="PNG")
    atomic_write_bytes(store.folder / "grid.png", buffer.getvalue())
    return rows, table
