"""Early stopping: stop a stage when its validation metric has not improved for `patience` evaluations.

The mission document asks for it on a chosen validation metric. Losses improve by going down;
the metrics in MAXIMIZED_METRICS (accuracy, pass@1) by going up.
"""
from __future__ import annotations

from typing import Optional

MAXIMIZED_METRICS = ("pass@1", "val_token_acc")  # every other metric is a loss: lower is better


class EarlyStopping:
    """Track the best value of a metric and count evaluations since it last improved."""

    def __init__(self, metric: str, patience: int, best: Optional[float] = None, bad_evals: int = 0):
        self.metric, self.patience = metric, patience
        self.maximize = metric in MAXIMIZED_METRICS
        self.best, self.bad_evals = best, bad_evals

    def update(self, value: float) -> bool:
        """Record an evaluation; True when it is the best so far."""
        improved = self.best is None or (value > self.best if self.maximize else value < self.best)
        if improved:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience
