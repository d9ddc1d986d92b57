"""Evaluation as the paper does it: fixed prompts and seeds, several images per prompt, every reward.

``run_evaluation`` samples each (model variant, prompt) once with a fixed seed, writes every image
and every score once (resumable after a crash or a kill), and ``summarize`` turns the scores into
means with standard errors and paired differences against the base model. Pure torch: the caller
supplies the sampler (ComfyUI's KSampler in the node and the CLI, an Euler loop in tests).
"""

from .loop import EvalCounts, EvalPlan, Metric, flow_sampler, metrics_for, run_evaluation
from .report import image_grid, scores_csv, summary_csv, summary_table, write_reports
from .stats import SummaryRow, summarize
from .store import EvalStore, EvalStoreError, ScoreKey

__all__ = [
    "EvalCounts",
    "EvalPlan",
    "EvalStore",
    "EvalStoreError",
    "Metric",
    "ScoreKey",
    "SummaryRow",
    "flow_sampler",
    "image_grid",
    "metrics_for",
    "run_evaluation",
    "scores_csv",
    "summarize",
    "summary_csv",
    "summary_table",
    "write_reports",
]
