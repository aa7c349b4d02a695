"""Noisy-label detection and correction with the L_spread paper's geometric heuristic (App. E.3).

Points with a wrong label look like a tiny stratum: far from the other points of their (noisy)
class. Within each batch of ``batch_size`` training embeddings (a seeded shuffle):

``score_i = cos(z_i, centre of the other batch points labelled y_i) - mean_j cos(z_i, z_j)``
over the batch points ``j`` with another label. The lowest ``noise_rate`` fraction of each batch is
flagged and relabelled with the class whose batch centre is nearest (cosine; its own class's centre
excludes the point itself).

The noisy labels are those the contrastive loss saw when the checkpoint was trained with
``contrastive_label_noise`` (stored in the checkpoint); otherwise symmetric noise is injected here,
after training, and the report says so. Reported: precision and recall of the detection, label
accuracy before/after correction, and the test accuracy of a logistic-regression head on the frozen
features trained with the noisy, the corrected and the clean labels [ours: the paper reports the
end model's accuracy].

Protocols (``robustrep analyze noisy-labels --protocol``):

- ``paper`` (default): App. E.3 / F.3, "the contrastive loss head with noisy labels and the cross
  entropy loss with clean labels from 20% of the training data". The checkpoint must have been
  trained so (``ce_labelled_fraction`` = ``--labelled-fraction``, default 0.2; checked). Added to
  the report: the test accuracy of the model's own jointly trained CE head (the paper's end model,
  no correction) and of a linear head on the clean labels of that labelled 20% only.
- ``full-labels``: the study as first shipped: whatever the checkpoint's CE head saw (with
  ``ce_labelled_fraction: 1.0`` every clean label, so the encoder was fully supervised), only the
  three heads above.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from robustrep.evaluation.features import fit_linear_probe
from robustrep.evaluation.labels import symmetric_noise


def geometric_scores(
    z: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and nearest-centre labels of one batch (``z``: b x d, ``labels``: b).

    Returns:
        ``(score, nearest)``: the geometric score of every point (low = suspicious) and the label of
        the nearest class centre (excluding the point itself from its own class's centre).
    """
    z = F.normalize(z.double(), dim=1)
    onehot = F.one_hot(labels, num_classes).double()  # b x C
    sums = onehot.T @ z  # C x d: sum of the batch's embeddings per class
    counts = onehot.sum(0)  # C
    own = sums[labels] - z  # centre direction of the other points of the own class (b x d)
    cos_own = (z * own).sum(1) / own.norm(dim=1).clamp(min=1e-12)
    # alone in its class: maximally suspicious
    cos_own = torch.where(counts[labels] > 1, cos_own, torch.full_like(cos_own, -1.0))
    total = z.sum(0)
    n_other = (labels.shape[0] - counts[labels]).clamp(min=1)
    mean_other = (z * (total - sums[labels])).sum(1) / n_other
    score = cos_own - mean_other
    # nearest class centre; the own class's centre leaves the point out
    centres = sums[None].expand(z.shape[0], -1, -1).clone()  # b x C x d
    centres[torch.arange(z.shape[0]), labels] = own
    cos_all = (z[:, None] * centres).sum(-1) / centres.norm(dim=-1).clamp(min=1e-12)
    present = (counts[None].expand_as(cos_all) - onehot) > 0
    nearest = cos_all.masked_fill(~present, -torch.inf).argmax(1)
    return score, nearest


def detect_and_relabel(
    z: torch.Tensor,
    noisy: torch.Tensor,
    noise_rate: float,
    num_classes: int,
    batch_size: int = 512,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flag the lowest-scoring ``noise_rate`` fraction of every batch and relabel it.

    Returns ``(flagged bool N, corrected labels N, scores N)``.
    """
    n = z.shape[0]
    # a stream distinct from the noise draw's
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 104729))
    flagged = torch.zeros(n, dtype=torch.bool)
    corrected = noisy.clone()
    scores = torch.zeros(n, dtype=torch.float64)
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        score, nearest = geometric_scores(z[idx], noisy[idx], num_classes)
        k = round(noise_rate * len(idx))
        low = idx[score.argsort()[:k]]
        flagged[low] = True
        corrected[low] = nearest[score.argsort()[:k]]
        scores[idx] = score
    return flagged, corrected, scores


@dataclass
class NoisyLabelResult:
    noise_rate: float
    noise_source: str
    precision: float
    recall: float
    label_acc_noisy: float
    label_acc_corrected: float
    test_acc: dict[str, float]
    protocol: str = "full-labels"
    #: training examples whose clean labels the CE head was trained on (None: no record = all)
    ce_labelled: int | None = None
    train_size: int = 0
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        seen = (
            "all of them"
            if self.ce_labelled is None
            else f"{self.ce_labelled} of {self.train_size}"
        )
        lines = [
            f"protocol {self.protocol}: CE head trained on the clean labels of {seen}",
            f"noise rate {self.noise_rate:.2f} ({self.noise_source})",
            f"detection precision {self.precision:.4f}  recall {self.recall:.4f}",
            f"training-label accuracy: noisy {self.label_acc_noisy:.4f} -> corrected "
            f"{self.label_acc_corrected:.4f}",
            f"{'linear head trained on':<28} {'test acc':>9}",
        ]
        lines += [f"{k:<28} {v:>9.4f}" for k, v in self.test_acc.items()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def run_noisy_labels(
    train: dict[str, torch.Tensor],
    test: dict[str, torch.Tensor],
    num_classes: int,
    noise_rate: float,
    noisy_labels: torch.Tensor | None = None,
    batch_size: int = 512,
    seed: int = 0,
    labelled: torch.Tensor | None = None,
) -> NoisyLabelResult:
    """Detection/correction on training features; ``noisy_labels`` indexed by dataset index (from a
    checkpoint) or None to inject symmetric noise now.

    ``labelled`` (bool by dataset index, the checkpoint's ``ce_labelled``): the paper's protocol;
    adds a linear head trained on the clean labels of those examples only.
    """
    clean = train["label"]
    if noisy_labels is not None:
        noisy = noisy_labels[train["index"]]
        source = "labels the contrastive loss saw during training (from the checkpoint)"
    else:
        noisy = symmetric_noise(clean, noise_rate, num_classes, seed)
        source = "symmetric noise injected after training; the encoder saw clean labels"
    is_noisy = noisy != clean
    flagged, corrected, _ = detect_and_relabel(
        train["features"], noisy, noise_rate, num_classes, batch_size, seed
    )
    hits = (flagged & is_noisy).sum().item()
    precision = hits / max(1, flagged.sum().item())
    recall = hits / max(1, is_noisy.sum().item())
    test_acc = {}
    for name, labels in (
        ("noisy labels", noisy),
        ("corrected labels", corrected),
        ("clean labels (oracle)", clean),
    ):
        predict = fit_linear_probe(train["features"], labels, num_classes, seed=seed)
        test_acc[name] = (predict(test["features"]) == test["label"]).double().mean().item()
    result = NoisyLabelResult(
        noise_rate,
        source,
        precision,
        recall,
        (noisy == clean).double().mean().item(),
        (corrected == clean).double().mean().item(),
        test_acc,
        train_size=len(clean),
    )
    if labelled is not None:
        rows = labelled[train["index"]]
        result.protocol = "paper"
        result.ce_labelled = int(rows.sum())
        predict = fit_linear_probe(train["features"][rows], clean[rows], num_classes, seed=seed)
        test_acc["clean labelled fraction only"] = (
            (predict(test["features"]) == test["label"]).double().mean().item()
        )
    return result


def head_accuracy(model, test: dict[str, torch.Tensor]) -> float:
    """Test accuracy of the model's own jointly trained CE head on frozen test features."""
    with torch.no_grad():
        model.eval()
        preds = model.head(test["features"].to(model.device)).argmax(1).cpu()
    return (preds == test["label"]).double().mean().item()
