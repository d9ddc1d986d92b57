"""LeapAlign and its baselines behind one interface: ``compute_loss(config, ...)`` picks by ``config.name``."""

from .base import Method, Plan, decode_and_score
from .leapalign import leap_loss_from_rollout
from .registry import METHODS, capture_for_method, compute_loss, get_method, loss_from_rollout

__all__ = ["METHODS", "Method", "Plan", "capture_for_method", "compute_loss", "decode_and_score", "get_method",
           "leap_loss_from_rollout", "loss_from_rollout"]
