"""Typed configs with the released code's defaults (docs/method.md "Defaults"); every open choice is a field here."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch

METHOD_NAMES = ("leapalign", "refl", "draft_k", "draft_lv", "drtune", "full_backprop")

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp64": torch.float64, "float64": torch.float64}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``None`` / a torch dtype / a name such as ``"bf16"`` -> a torch dtype (``None`` = keep the input's)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


@dataclass
class MethodConfig:
    """What one training sample computes. Defaults are the authors' released code's (docs/method.md).

    * ``alpha = 0.3``: the released code's default and the paper's best ablation (the paper's
      pseudocode names 0.5).
    * ``pair_sampling = "released"``: two distinct evaluation steps of the N, k the noisier, j never
      the final point, one pair per update for the whole batch and every rank; ``"pseudocode"`` is
      the paper's algorithm box (k uniform, then j after it, final point included).
      ``pair_window < 1`` draws both from the last fraction of the steps (partial-range ablation).
    * ``leap_steps``: 2 is LeapAlign; 1 leaps x_k -> x_0 directly and 3 adds a third point between
      j and the end (the paper's one-/three-step ablation).
    * ``hinge_lambda = None`` takes the reward's ``default_lambda`` (HPSv2.1 0.55, PickScore 0.4, ...).
    * ``k``/``j`` fix the leap's grid points (inspection); ``None`` samples them per update.
    * Baselines, as in the released comparison code (this project's earlier values in brackets, still
      selectable): ``refl_late_fraction = 0.44``, ReFL's start point among the last 11 of 25 steps
      scaled to N [0.25]; ``draft_lv_copies = 2`` re-noised copies, ``draft_lv_sigma = None`` (= the
      last non-zero grid sigma), ``draft_lv_include_last`` keeps the K = 1 term on the real chain;
      ``drtune_steps = 3`` evenly spaced trained steps [5] and ``drtune_early_stop = 0.4``: the chain
      stops at a random grid point in the last 40 % and the reward scores that point's one-step
      prediction of x_0 [0: no early stop, reward on x_N]; ``draft_k``: DRaFT-K's K
      (``full_backprop`` is DRaFT-K with K = N).
    * ``baseline_weighting = False``: baselines use the same hinge loss with weight 1 (they have no
      leap, so no trajectory-similarity weight).
    * ``gradient_checkpointing`` (chained methods) checkpoints each velocity call with
      ``torch.utils.checkpoint`` (``use_reentrant=False``); ``checkpoint_context`` is a factory of a
      context manager entered around every velocity call made with grad (ComfyUI needs
      ``OutOfPlaceAdds`` active inside the checkpointed function).
    """

    name: str = "leapalign"
    alpha: float = 0.3
    tau: float = 0.1
    hinge_lambda: float | None = None
    weighting: str = "both"
    k: int | None = None
    j: int | None = None
    pair_sampling: str = "released"
    pair_window: float = 1.0
    leap_steps: int = 2
    rollout_dtype: torch.dtype | str | None = None
    keep_trajectory: bool = False
    refl_late_fraction: float = 0.44
    draft_k: int = 1
    draft_lv_copies: int = 2
    draft_lv_sigma: float | None = None
    draft_lv_include_last: bool = True
    drtune_steps: int = 3
    drtune_early_stop: float = 0.4
    gradient_checkpointing: bool = True
    checkpoint_context: Callable[[], contextlib.AbstractContextManager] | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> MethodConfig:
        if self.name not in METHOD_NAMES:
            raise ValueError(f"unknown method {self.name!r}; choose one of {', '.join(METHOD_NAMES)}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha (gradient discount) must be in [0, 1], got {self.alpha}")
        if not float(self.tau) > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.k is not None and self.j is not None and not int(self.k) < int(self.j):
            raise ValueError(f"need k < j, got k = {self.k} >= j = {self.j}")
        if not 0.0 < float(self.refl_late_fraction) <= 1.0:
            raise ValueError(f"refl_late_fraction must be in (0, 1], got {self.refl_late_fraction}")
        if int(self.draft_k) < 1:
            raise ValueError(f"draft_k must be >= 1, got {self.draft_k}")
        if int(self.draft_lv_copies) < 1:
            raise ValueError(f"draft_lv_copies must be >= 1, got {self.draft_lv_copies}")
        if self.draft_lv_sigma is not None and not 0.0 < float(self.draft_lv_sigma) <= 1.0:
            raise ValueError(f"draft_lv_sigma must be in (0, 1], got {self.draft_lv_sigma}")
        if int(self.drtune_steps) < 1:
            raise ValueError(f"drtune_steps must be >= 1, got {self.drtune_steps}")
        if not 0.0 <= float(self.drtune_early_stop) <= 1.0:
            raise ValueError(f"drtune_early_stop must be a fraction in [0, 1] (0 = no early stop), "
                             f"got {self.drtune_early_stop}")
        from .sigmas import PAIR_SAMPLING
        if self.pair_sampling not in PAIR_SAMPLING:
            raise ValueError(f"pair_sampling must be one of {PAIR_SAMPLING}, got {self.pair_sampling!r}")
        if not 0.0 < float(self.pair_window) <= 1.0:
            raise ValueError(f"pair_window must be a fraction in (0, 1], got {self.pair_window}")
        if int(self.leap_steps) not in (1, 2, 3):
            raise ValueError(f"leap_steps must be 1, 2 or 3, got {self.leap_steps}")
        resolve_dtype(self.rollout_dtype)
        from .leap import WEIGHTINGS
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        return self


@dataclass
class OptimConfig:
    """AdamW over the trainable parameters only (paper: lr 1e-5, HPSv3 8e-6; wd 1e-4; clip 1.0)."""

    lr: float = 1e-5
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.995

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay}")


@dataclass
class TrainConfig:
    """The loop around a loss function.

    ``batch_size`` is the *global* number of prompts per micro-batch (split evenly over ranks);
    ``grad_accum`` micro-batches make one optimizer step (paper: 64 prompts per step, 300 steps).
    ``checkpoint_every = 0`` disables periodic checkpoints; ``keep_checkpoints`` old ones are kept.
    ``should_stop`` is polled before every step (the ComfyUI node raises its interrupt from it).
    """

    steps: int = 300
    batch_size: int = 64
    grad_accum: int = 1
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    keep_checkpoints: int = 2
    nan_guard: bool = True
    should_stop: Callable[[], bool] | None = None

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("checkpoint_every > 0 needs checkpoint_dir")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")

    def to_dict(self) -> dict:
        """Plain-type summary (stored in checkpoints for inspection; callables dropped)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("optim", "should_stop")}
        out["optim"] = asdict(self.optim)
        out["optim"]["betas"] = list(self.optim.betas)
        return out
