"""Evaluation callbacks; each depends only on a method's ``embed``/``forward``."""

from robustrep.callbacks.group_metrics import GroupMetrics

__all__ = ["GroupMetrics"]
