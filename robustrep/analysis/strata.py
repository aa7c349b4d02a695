"""Strata recovery -> worst-group robustness (Sohoni et al. 2020, as used by the L_spread paper).

1. Embed the training set with the frozen encoder.
2. Inside each class: reduce the embeddings to a few dimensions (UMAP when ``umap-learn`` is
   installed, otherwise PCA, with a notice) and cluster them (k-means; ``k`` fixed or chosen by the
   silhouette score). Each (class, cluster) pair is a pseudo-group.
3. Score the recovery: for every true group, the F1 of the best-matching pseudo-group of its class
   (the paper reports the mean, e.g. 59.0 on Waterbirds with L_spread).
4. Train Group DRO on the pseudo-groups and report test worst-group accuracy on the true groups.
   [ours] Group DRO here trains a linear classifier on the frozen, standardised embeddings
   (full-batch, exponentiated group weights) instead of retraining the whole network as Sohoni et
   al. do; ERM and true-group (oracle) Group DRO heads are trained the same way for comparison.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from robustrep.errors import ConfigError
from robustrep.metrics import GroupAccuracy

UMAP_NOTICE = (
    "umap-learn is not installed, so strata recovery reduces dimensions with PCA instead of UMAP "
    "(pip install umap-learn for the paper's setting)"
)


def reduce_dimensions(
    x: np.ndarray, n_components: int = 2, method: str = "auto", seed: int = 0
) -> tuple[np.ndarray, str]:
    """Project ``x`` (N x D) to ``n_components`` dimensions; returns ``(projection, method used)``.

    ``method``: ``umap`` (requires umap-learn), ``pca``, ``none`` (keep the centred
    features) or ``auto`` (UMAP if installed, else PCA with a warning).
    """
    # centred, not standardised: per-dimension scaling would inflate noise dimensions
    x = x - x.mean(0)
    if method in ("auto", "umap"):
        try:
            import umap  # type: ignore[import-not-found]
        except ImportError:
            if method == "umap":
                raise ConfigError(
                    "reducer umap needs the optional package umap-learn (pip install "
                    "umap-learn); or use --reducer pca"
                ) from None
            warnings.warn(UMAP_NOTICE, stacklevel=2)
            method = "pca"
        else:
            neighbours = max(2, min(15, x.shape[0] - 1))
            return umap.UMAP(
                n_components=n_components, n_neighbors=neighbours, random_state=seed
            ).fit_transform(x), "umap"
    if method == "pca":
        from sklearn.decomposition import PCA

        k = min(n_components, x.shape[0], x.shape[1])
        return PCA(n_components=k, random_state=seed).fit_transform(x), "pca"
    if method == "none":
        return x, "none"
    raise ConfigError(f"unknown reducer {method!r}; choose auto, umap, pca or none")


def cluster_within_classes(
    features: torch.Tensor,
    labels: torch.Tensor,
    clusters_per_class: int | None = None,
    max_clusters: int = 6,
    reducer: str = "auto",
    n_components: int = 2,
    seed: int = 0,
) -> tuple[torch.Tensor, dict]:
    """Pseudo-group id per example (clusters of one class get consecutive ids).

    Args:
        features: N x D training embeddings; labels: N class labels.
        clusters_per_class: fixed ``k``; None = choose ``k`` in ``2..max_clusters`` per class by the
            silhouette score (a class too small to split keeps one cluster).
        reducer, n_components: see :func:`reduce_dimensions`.
        seed: seed of the reducer and of k-means.

    Returns:
        ``(pseudo_groups, info)`` with ``info = {"reducer": ..., "clusters": {class: k}}``.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    pseudo = torch.full_like(labels, -1)
    info: dict = {"clusters": {}}
    offset = 0
    x_all = features.double().numpy()
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        x, used = reduce_dimensions(x_all[idx.numpy()], n_components, reducer, seed)
        info["reducer"] = used
        if clusters_per_class is not None:
            candidates = [min(clusters_per_class, len(idx))]
        else:
            candidates = [k for k in range(2, max_clusters + 1) if k < len(idx)] or [1]
        best, best_score = None, -np.inf
        rng = np.random.default_rng(seed)
        sample = rng.choice(len(idx), size=min(len(idx), 2000), replace=False)
        for k in candidates:
            assign = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
            score = (
                silhouette_score(x[sample], assign[sample])
                if k > 1 and len(np.unique(assign[sample])) > 1
                else 0.0
            )
            if best is None or score > best_score:
                best, best_score = assign, score
        assert best is not None
        pseudo[idx] = torch.as_tensor(best, dtype=torch.long) + offset
        info["clusters"][int(c)] = int(best.max()) + 1
        offset += int(best.max()) + 1
    return pseudo, info


def strata_f1(pseudo: torch.Tensor, groups: torch.Tensor) -> dict[int, float]:
    """For every true group: F1 of its best-matching pseudo-group, ``2|A n B| / (|A| + |B|)``.

    Pseudo-groups never straddle classes (they are clusters inside a class), so the best match of a
    group is always a cluster of its own class.
    """
    keep = groups >= 0
    pseudo, groups = pseudo[keep], groups[keep]
    g_ids, g_inv = torch.unique(groups, return_inverse=True)
    p_ids, p_inv = torch.unique(pseudo, return_inverse=True)
    table = torch.zeros(len(g_ids), len(p_ids), dtype=torch.float64)
    table.index_put_((g_inv, p_inv), torch.ones(len(groups), dtype=torch.float64), accumulate=True)
    f1 = 2 * table / (table.sum(1, keepdim=True) + table.sum(0, keepdim=True))
    return {int(g): float(v) for g, v in zip(g_ids, f1.max(1).values)}


def train_linear_head(
    x: torch.Tensor,
    y: torch.Tensor,
    groups: torch.Tensor | None,
    num_classes: int,
    steps: int = 300,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    step_size: float = 0.01,
    seed: int = 0,
):
    """A linear classifier on standardised features, full-batch Adam. ``groups`` given = Group DRO
    (Sagawa et al.: ``q_g <- q_g exp(step_size * loss_g)``, loss ``sum_g q_g loss_g``); None = ERM.
    Returns ``predict(features) -> labels``."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    xs = (x - mean) / std
    head = torch.nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    if groups is not None:
        g_ids, g_inv = torch.unique(groups, return_inverse=True)
        counts = torch.bincount(g_inv).double()
        q = torch.full((len(g_ids),), 1.0 / len(g_ids), dtype=torch.float64)
    with torch.enable_grad():
        for _ in range(steps):
            losses = torch.nn.functional.cross_entropy(head(xs), y, reduction="none")
            if groups is None:
                loss = losses.mean()
            else:
                group_loss = (
                    torch.zeros(len(g_ids), dtype=torch.float64).index_add(
                        0, g_inv, losses.double()
                    )
                    / counts
                )
                q = q * torch.exp(step_size * group_loss.detach())
                q = q / q.sum()
                loss = (q * group_loss).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()

    @torch.no_grad()
    def predict(z: torch.Tensor) -> torch.Tensor:
        return head((z - mean) / std).argmax(1)

    return predict


@dataclass
class StrataResult:
    reducer: str
    clusters: dict[int, int]
    f1: dict[int, float]
    mean_f1: float
    worst_group_acc: dict[str, float] = field(default_factory=dict)
    acc: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"reducer: {self.reducer}; clusters per class: {self.clusters}"]
        lines.append(
            "strata F1 per true group: "
            + ", ".join(f"g{g}={v:.3f}" for g, v in self.f1.items())
            + f"  (mean {self.mean_f1:.3f})"
        )
        lines.append(f"{'head on frozen features':<32} {'test acc':>9} {'worst-group':>12}")
        for name in self.acc:
            lines.append(f"{name:<32} {self.acc[name]:>9.4f} {self.worst_group_acc[name]:>12.4f}")
        return "\n".join(lines)


def run_strata(
    train: dict[str, torch.Tensor],
    test: dict[str, torch.Tensor],
    num_classes: int,
    num_groups: int,
    clusters_per_class: int | None = None,
    max_clusters: int = 6,
    reducer: str = "auto",
    n_components: int = 2,
    steps: int = 300,
    step_size: float = 0.01,
    seed: int = 0,
) -> StrataResult:
    """Strata recovery on training features and Group DRO heads scored on the test features' true
    groups.
    """
    if (train["group"] < 0).all() or (test["group"] < 0).all():
        raise ConfigError(
            "strata recovery is scored against true groups, and this "
            "benchmark has none (group = -1)"
        )
    pseudo, info = cluster_within_classes(
        train["features"],
        train["label"],
        clusters_per_class,
        max_clusters,
        reducer,
        n_components,
        seed,
    )
    f1 = strata_f1(pseudo, train["group"])
    result = StrataResult(
        info.get("reducer", reducer), info["clusters"], f1, float(np.mean(list(f1.values())))
    )
    heads = {
        "ERM": None,
        "Group DRO (pseudo-groups)": pseudo,
        "Group DRO (true groups, oracle)": train["group"],
    }
    for name, groups in heads.items():
        predict = train_linear_head(
            train["features"],
            train["label"],
            groups,
            num_classes,
            steps=steps,
            step_size=step_size,
            seed=seed,
        )
        metric = GroupAccuracy(num_groups)
        metric.update(predict(test["features"]), test["label"], test["group"])
        values = metric.compute()
        result.acc[name] = float(values["acc"])
        result.worst_group_acc[name] = float(values["worst_group_acc"])
    return result
