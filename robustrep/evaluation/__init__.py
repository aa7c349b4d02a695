"""The evaluation toolkit at a low floor: frozen features, probes, kNN, label noise, Chroma-VAE's
stage-2 classifier. Callbacks, analyses and methods all use these; this package imports none of
them."""

from robustrep.evaluation.features import extract_features, fit_linear_probe
from robustrep.evaluation.knn import cosine_knn_scores, euclidean_knn_votes, knn_indices, knn_votes
from robustrep.evaluation.labels import symmetric_noise
from robustrep.evaluation.partitions import partition_alignment
from robustrep.evaluation.stage2 import Stage2

__all__ = [
    "Stage2",
    "cosine_knn_scores",
    "euclidean_knn_votes",
    "extract_features",
    "fit_linear_probe",
    "knn_indices",
    "knn_votes",
    "partition_alignment",
    "symmetric_noise",
]
