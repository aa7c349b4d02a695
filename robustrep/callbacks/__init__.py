"""Evaluation callbacks. Each depends only on a method's ``embed``/``forward`` and evaluation
outputs, except ``ChromaDiagnostics``, ``CIMImages``, ``CRLTACMetrics`` and ``PartitionAlignment``,
which name the protocol they need (:mod:`robustrep.callbacks.protocols`) and check it in
``setup``."""

from robustrep.callbacks.background_gap import BackgroundGap
from robustrep.callbacks.chroma_diagnostics import ChromaDiagnostics
from robustrep.callbacks.cim_images import CIMImages
from robustrep.callbacks.coarse_to_fine import CoarseToFine
from robustrep.callbacks.crltac_metrics import CRLTACMetrics
from robustrep.callbacks.group_metrics import GroupMetrics
from robustrep.callbacks.knn import KNNMonitor
from robustrep.callbacks.linear_probe import LinearProbe
from robustrep.callbacks.partition_alignment import PartitionAlignment

__all__ = [
    "BackgroundGap",
    "CIMImages",
    "ChromaDiagnostics",
    "CoarseToFine",
    "CRLTACMetrics",
    "GroupMetrics",
    "KNNMonitor",
    "LinearProbe",
    "PartitionAlignment",
]
