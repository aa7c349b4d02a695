"""Evaluation callbacks; each depends only on a method's ``embed``/``forward``."""

from robustrep.callbacks.chroma_diagnostics import ChromaDiagnostics
from robustrep.callbacks.group_metrics import GroupMetrics

__all__ = ["ChromaDiagnostics", "GroupMetrics"]
