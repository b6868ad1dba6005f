"""Shared optimizers: CautiousAdam, FAMO task weighting, and Balanced (both in one torch optimizer)."""

from .balanced import TASK_WEIGHT_UPDATES, Balanced, capture_rng_state, replayed_rng
from .cautious_adam import CautiousAdam
from .famo import FAMO

__all__ = ["TASK_WEIGHT_UPDATES", "Balanced", "CautiousAdam", "FAMO", "capture_rng_state", "replayed_rng"]
