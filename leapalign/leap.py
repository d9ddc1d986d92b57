"""The two-step leap, trajectory-similarity weights and hinge loss (docs/method.md steps 3, 5, 6).

Connectors are written so their forward values are *exactly* the real latents
(``xtil = x_true + (xhat - sg(xhat))``: the bracket is exactly zero in floating point), and the
gradient discount ``alpha`` scales only the nested path into the second velocity's input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .rollout import sigma_batch
from .types import VelocityFn


@dataclass
class LeapOutput:
    """``x0`` carries the gradient of the two leaps with the forward value of the real x_0.

    ``xhat_j``/``xhat_0`` are the leap predictions (detached), ``d_j``/``d_0`` the per-sample mean
    absolute distances to the real latents (no grad). ``evaluations`` counts velocity calls made.
    """

    x0: Tensor
    xtil_j: Tensor
    xhat_j: Tensor
    xhat_0: Tensor
    d_j: Tensor
    d_0: Tensor
    evaluations: int


def connect(x_true: Tensor, x_hat: Tensor) -> Tensor:
    """Latent connector: forward value exactly ``x_true``, gradient that of ``x_hat``."""
    return x_true + (x_hat - x_hat.detach())


def discount(x: Tensor, alpha: float) -> Tensor:
    """Forward value exactly ``x``; gradient scaled by ``alpha`` (alpha = 0 cuts the path)."""
    if alpha == 0:
        return x.detach()
    if alpha == 1:
        return x
    return x.detach() + alpha * (x - x.detach())


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (gradient discount) must be in [0, 1], got {alpha}")
    return alpha


def _mean_abs(a: Tensor, b: Tensor) -> Tensor:
    return (a.detach() - b.detach()).abs().flatten(1).float().mean(dim=1)


def two_step_leap(velocity: VelocityFn, x_k: Tensor, x_j: Tensor, x_0: Tensor, s_k: Tensor | float,
                  s_j: Tensor | float, alpha: float = 0.3,
                  call_context: Callable[[], contextlib.AbstractContextManager] | None = None) -> LeapOutput:
    """Leap x_k -> x_j -> x_0 with two velocity evaluations (docs/method.md step 3).

    ``x_k, x_j, x_0`` are the real (rollout) latents; ``s_k > s_j`` their sigmas; the grid ends at 0.
    When ``s_j == 0`` (j = N, x_j is x_0) the second evaluation is skipped: its coefficient is s_j = 0
    and a ComfyUI-derived velocity divides by sigma, so the leap degenerates to one step exactly as
    docs/method.md describes. ``call_context`` (a factory) is entered around each velocity call.
    """
    alpha = check_alpha(alpha)
    # own copies: a view into the grid would keep the whole O(N) grid saved for backward
    s_k = torch.as_tensor(s_k).detach().clone()
    s_j = torch.as_tensor(s_j).detach().clone()
    if not float(s_k) > float(s_j) >= 0:
        raise ValueError(f"need s_k > s_j >= 0, got s_k = {float(s_k)}, s_j = {float(s_j)}")
    if not x_k.shape == x_j.shape == x_0.shape:
        raise ValueError(f"x_k, x_j, x_0 shapes differ: {tuple(x_k.shape)}, {tuple(x_j.shape)}, {tuple(x_0.shape)}")
    ctx = call_context or contextlib.nullcontext
    batch = x_k.shape[0]
    x_k, x_j, x_0 = x_k.detach(), x_j.detach(), x_0.detach()

    with ctx():
        v_k = velocity(x_k, sigma_batch(s_k, batch))
    xhat_j = x_k - (s_k - s_j) * v_k.to(x_k.dtype)
    xtil_j = connect(x_j, xhat_j)
    evaluations = 1
    if float(s_j) == 0.0:
        xhat_0 = xtil_j
    else:
        xin_j = discount(xtil_j, alpha)
        with ctx():
            v_j = velocity(xin_j, sigma_batch(s_j, batch))
        xhat_0 = xtil_j - s_j * v_j.to(xtil_j.dtype)
        evaluations = 2
    x0 = connect(x_0, xhat_0)
    return LeapOutput(x0=x0, xtil_j=xtil_j, xhat_j=xhat_j.detach(), xhat_0=xhat_0.detach(),
                      d_j=_mean_abs(x_j, xhat_j), d_0=_mean_abs(x_0, xhat_0), evaluations=evaluations)


def three_step_leap(velocity: VelocityFn, x_k: Tensor, x_j: Tensor, x_m: Tensor, x_0: Tensor,
                    s_k: Tensor | float, s_j: Tensor | float, s_m: Tensor | float, alpha: float = 0.3,
                    call_context: Callable[[], contextlib.AbstractContextManager] | None = None) -> LeapOutput:
    """The paper's three-step ablation: x_k -> x_j -> x_m -> x_0, a connector at every point.

    The first two leaps are :func:`two_step_leap` ending at the real x_m; the third is one more
    discounted leap from there. ``d_j`` of the result is ``d_j + d_m`` (the distances of both
    intermediate points), so the trajectory weight keeps its two-term form.
    """
    first = two_step_leap(velocity, x_k, x_j, x_m, s_k, s_j, alpha=alpha, call_context=call_context)
    s_m = torch.as_tensor(s_m).detach().clone()
    if not float(s_j) > float(s_m) > 0:
        raise ValueError(f"need s_j > s_m > 0 for a three-step leap, got s_j = {float(s_j)}, s_m = {float(s_m)}")
    ctx = call_context or contextlib.nullcontext
    xin_m = discount(first.x0, alpha)
    with ctx():
        v_m = velocity(xin_m, sigma_batch(s_m, x_k.shape[0]))
    xhat_0 = first.x0 - s_m * v_m.to(first.x0.dtype)
    x0 = connect(x_0.detach(), xhat_0)
    d_m = _mean_abs(x_m, first.xhat_0)
    return LeapOutput(x0=x0, xtil_j=first.xtil_j, xhat_j=first.xhat_j, xhat_0=xhat_0.detach(),
                      d_j=first.d_j + d_m, d_0=_mean_abs(x_0, xhat_0), evaluations=first.evaluations + 1)


WEIGHTINGS = ("both", "d_j", "d_0", "none")


def trajectory_weight(d_j: Tensor, d_0: Tensor, tau: float = 0.1, weighting: str = "both") -> Tensor:
    """``w = 1 / (max(d_j, tau) + max(d_0, tau))`` per sample, without gradient (docs/method.md step 5).

    ``weighting`` selects the paper's ablations: ``"d_j"`` or ``"d_0"`` keeps one term
    (``w = 1 / max(d, tau)``), ``"none"`` gives ``w = 1``.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0 (it floors the distances in the weight), got {tau}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    d_j, d_0 = d_j.detach(), d_0.detach()
    if weighting == "none":
        return torch.ones_like(d_j)
    terms = {"d_j": [d_j], "d_0": [d_0], "both": [d_j, d_0]}[weighting]
    return 1.0 / sum(t.clamp_min(tau) for t in terms)


def hinge_loss(reward: Tensor, weight: Tensor | None, lam: float) -> Tensor:
    """``mean_b(w_b * relu(lam - r_b))``: samples whose reward passed ``lam`` contribute no gradient.

    A plain mean over the local batch (not ``sum(w h) / sum(w)``), as docs/method.md writes it: with equal
    per-rank batch sizes, averaging gradients over ranks then equals the global-batch loss.
    """
    if reward.ndim != 1:
        raise ValueError(f"reward must have shape [B], got {tuple(reward.shape)}")
    per_sample = torch.relu(lam - reward)
    if weight is not None:
        per_sample = weight.detach().to(per_sample.dtype) * per_sample
    return per_sample.mean()
