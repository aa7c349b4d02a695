"""SpreadSupCon: supervised contrastive learning that keeps the strata (L_spread) and its baselines.

Paper: Chen, Fu, Narayan, Zhang, Song, Fatahalian, Re, "Perfectly Balanced: Improving Transfer and
Robustness of Supervised Contrastive Learning" (ICML 2022); METHODS.md section 4.

Each training example comes with two augmented views (``data.num_views: 2``,
``data.augment: contrastive``). Both views go through the encoder; the ``2B`` embeddings (optionally
through a projection MLP) enter the contrastive loss chosen by ``loss``:
``spread`` (alpha * L_attract + (1 - alpha) * L_repel), ``attract``, ``repel``, ``supcon`` or
``simclr`` (see :mod:`robustrep.losses.contrastive`; both views are anchors).

Two settings from the paper:

- **ViT setting** (CIFAR / MNIST, ``ce_head: true``, the default): a linear cross-entropy head on
  the embedding is trained jointly on both views (total loss = ``ce_weight * CE + L_contrastive``);
  ``forward`` returns its logits, so ``val/acc``, ``test/worst_group_acc`` ... are logged as usual.
  The CE gradient reaches the encoder, so the head's labels supervise the representation too.
- **ResNet setting** (Waterbirds, ISIC, ``ce_head: false``): contrastive loss alone; there is no
  ``forward`` classifier, validation/test steps return no logits, and the
  :class:`~robustrep.callbacks.LinearProbe` / :class:`~robustrep.callbacks.CoarseToFine` callbacks
  (add them under ``trainer.callbacks``) report ``probe/...`` and ``c2f/acc``.

``ce_head`` semantics (what the CE head sees): the *clean* labels of the training examples in its
labelled set, both views. ``ce_labelled_fraction: 1.0`` (the default, every shipped config) = every
training example; below 1, a fixed uniformly drawn set of exactly ``round(fraction * n)`` examples
(``labelled_seed``; drawn once per run, stored in checkpoints) and the others are unlabelled for the
head: they enter only the contrastive loss. The paper trains the head on 20% of the labels in its
noisy-label study (App. E.3, F.3) and on 1% of them in the coreset runs (App. E.3).

``contrastive_label_noise`` replaces a fraction of the labels the *contrastive* loss sees with
uniformly drawn other classes (the paper's noisy-label experiment; the CE head keeps the clean
labels). With ``ce_labelled_fraction: 1.0`` the encoder therefore still gets every clean label
through the CE head; the paper's protocol is ``ce_labelled_fraction: 0.2``. The noisy table is
drawn once per run from ``noise_seed``, identical on every rank, and saved in checkpoints, where
``robustrep analyze noisy-labels`` finds it.
"""

from __future__ import annotations

import torch
from torch import nn

from robustrep.errors import ConfigError
from robustrep.evaluation.labels import labelled_subset, symmetric_noise
from robustrep.losses.contrastive import LOSSES, contrastive_loss, stack_views
from robustrep.methods.base import RobustMethod


class SpreadSupCon(RobustMethod):
    """Encoder (+ optional projection) trained with a supervised or self-supervised contrastive
    loss.

    Args:
        loss: ``spread`` (the paper's L_spread), ``attract`` (alpha = 1), ``repel`` (alpha = 0),
            ``supcon`` (Khosla et al.) or ``simclr`` (NT-Xent, labels ignored).
        temperature: the contrastive temperature (the paper's tau). Paper: 0.5 for most datasets
            (0.9 for CIFAR10 end models).
        alpha: weight of L_attract in L_spread (paper, App. E.2: 0.16-0.67 per dataset; 0.25 for the
            coarse-to-fine runs, 0.5 for MNIST-Coarse). Ignored by the other losses.
        projection_dim: output size of a projection MLP (embedding -> hidden -> projection_dim,
            ReLU) applied before the loss. None (default, as in the paper's ViT runs) = the loss
            sees the embedding itself. SimCLR/SupCon ResNet runs usually use 128.
        projection_hidden: hidden size of the projection MLP; None = the embedding size.
        ce_head: train a linear cross-entropy head on the embedding jointly (the ViT setting) on the
            clean labels of its labelled set (``ce_labelled_fraction``); False = contrastive only
            (the ResNet setting; evaluate with probe callbacks).
        ce_weight: weight of the cross-entropy term when ``ce_head`` is on.
        gather_distributed: under DDP, contrast against the embeddings of every rank (gathered
            with gradients). False = each rank contrasts only its local batch.
        contrastive_label_noise: fraction of training labels replaced by a uniformly drawn
            *other* class in the contrastive loss only (0 = clean; the paper's noisy-label study).
        noise_seed: seed of the noisy-label draw.
        ce_labelled_fraction: fraction of the training examples whose clean labels the CE head is
            trained on (exactly ``round(fraction * n)``, drawn uniformly once per run; the CE term
            is the mean over a batch's labelled views, 0 in a batch without any). 1.0 (default) =
            all, as before; the paper's noisy-label study uses 0.2, its coreset runs 0.01 of the
            full training set. Needs ``ce_head``.
        labelled_seed: seed of the labelled-set draw (a stream distinct from ``noise_seed``'s).
        *args, **kwargs: see ``RobustMethod`` (backbone, optimizer, metadata).
    """

    required_keys = ("views", "label")

    def __init__(
        self,
        *args,
        loss: str = "spread",
        temperature: float = 0.5,
        alpha: float = 0.5,
        projection_dim: int | None = None,
        projection_hidden: int | None = None,
        ce_head: bool = True,
        ce_weight: float = 1.0,
        gather_distributed: bool = True,
        contrastive_label_noise: float = 0.0,
        noise_seed: int = 0,
        ce_labelled_fraction: float = 1.0,
        labelled_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if loss not in LOSSES:
            raise ConfigError(
                f"SpreadSupCon: unknown loss {loss!r}; choose one of {', '.join(LOSSES)}"
            )
        if temperature <= 0:
            raise ConfigError(f"SpreadSupCon: temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"SpreadSupCon: alpha must be in [0, 1], got {alpha}")
        if not 0.0 <= contrastive_label_noise < 1.0:
            raise ConfigError(
                "SpreadSupCon: contrastive_label_noise must be in [0, 1), "
                f"got {contrastive_label_noise}"
            )
        if not 0.0 < ce_labelled_fraction <= 1.0:
            raise ConfigError(
                f"SpreadSupCon: ce_labelled_fraction must be in (0, 1], got {ce_labelled_fraction}"
            )
        if ce_labelled_fraction < 1.0 and not ce_head:
            raise ConfigError(
                "SpreadSupCon: ce_labelled_fraction < 1 needs ce_head: true (it is the fraction "
                "of labels the CE head is trained on)"
            )
        self.loss_name = loss
        self.temperature = temperature
        self.alpha = alpha
        self.ce_weight = ce_weight
        self.gather_distributed = gather_distributed
        self.contrastive_label_noise = contrastive_label_noise
        self.noise_seed = noise_seed
        self.ce_labelled_fraction = ce_labelled_fraction
        self.labelled_seed = labelled_seed
        self.projection: nn.Module = nn.Identity()
        if projection_dim is not None:
            hidden = projection_hidden or self.feature_dim
            self.projection = nn.Sequential(
                nn.Linear(self.feature_dim, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, projection_dim),
            )
        self.head = nn.Linear(self.feature_dim, self.num_classes) if ce_head else None
        if self.head is None:
            self.selection_metric = None  # no classifier to select on: test the last epoch
        # contrastive labels by training index, when noise > 0
        self.noisy_labels: torch.Tensor | None = None
        # bool by training index: the examples whose labels the CE head sees, when fraction < 1
        self.ce_labelled: torch.Tensor | None = None

    # ------------------------------------------------------------------ model
    @property
    def has_classifier(self) -> bool:
        return self.head is not None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the jointly trained CE head (ViT setting only)."""
        if self.head is None:
            raise ConfigError(
                "SpreadSupCon was built with ce_head: false, so it has no classifier; use the "
                "LinearProbe callback for accuracy"
            )
        return self.head(self.embed(images))

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and dm is not None and getattr(dm, "num_views", 2) < 2:
            raise ConfigError(
                "SpreadSupCon contrasts two augmented views per example, but the datamodule "
                f"gives {dm.num_views}: set data.init_args.num_views: 2 and "
                "data.init_args.augment: contrastive"
            )
        super().setup(stage)

    # ------------------------------------------------------------------ noisy contrastive labels
    def on_fit_start(self) -> None:
        need_noise = self.contrastive_label_noise > 0 and self.noisy_labels is None
        need_labelled = self.ce_labelled_fraction < 1.0 and self.ce_labelled is None
        if not (need_noise or need_labelled):
            return
        dm = self.trainer.datamodule
        batches = list(dm.train_eval_dataloader(shard=False))
        index = torch.cat([b["index"] for b in batches])
        labels = torch.full((int(index.max()) + 1,), -1, dtype=torch.long)  # by dataset index
        labels[index] = torch.cat([b["label"] for b in batches])
        if need_noise:
            noisy = labels.clone()
            noisy[index] = symmetric_noise(
                labels[index], self.contrastive_label_noise, self.num_classes, self.noise_seed
            )
            self.noisy_labels = noisy
        if need_labelled:
            chosen = labelled_subset(len(index), self.ce_labelled_fraction, self.labelled_seed)
            mask = torch.zeros(labels.shape[0], dtype=torch.bool)
            mask[index[chosen]] = True
            self.ce_labelled = mask

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.noisy_labels is not None:
            checkpoint["spread_supcon_noisy_labels"] = self.noisy_labels.cpu()
        if self.ce_labelled is not None:
            checkpoint["spread_supcon_ce_labelled"] = self.ce_labelled.cpu()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.noisy_labels = checkpoint.get("spread_supcon_noisy_labels")
        self.ce_labelled = checkpoint.get("spread_supcon_ce_labelled")

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        views = batch["views"]
        if len(views) < 2:
            raise ConfigError(
                "SpreadSupCon needs at least two views per example: set data.num_views: 2"
            )
        labels = batch["label"]
        h = self.embed(torch.cat(list(views)))  # V*B x D, view-major
        b = labels.shape[0]
        contrast_labels = labels
        if self.noisy_labels is not None:
            contrast_labels = self.noisy_labels.to(labels.device)[batch["index"]]
        z = self.projection(h)
        z_rows, y_rows, instance = stack_views(list(z.split(b)), contrast_labels)
        con = self.check_finite(
            contrastive_loss(
                z_rows,
                y_rows,
                instance,
                self.loss_name,
                self.temperature,
                self.alpha,
                gather=self.gather_distributed,
            ),
            f"{self.loss_name} contrastive loss",
        )
        logs = {"train/contrastive_loss": con}
        loss = con
        if self.head is not None:
            logits = self.head(h)
            targets = labels.repeat(len(views))
            correct = (logits.argmax(1) == targets).float()
            if self.ce_labelled is None:  # every example labelled
                ce = nn.functional.cross_entropy(logits.float(), targets)
                acc = correct.mean()
            else:  # mean over the labelled views; the head never sees the others' labels
                weight = self.ce_labelled.to(labels.device)[batch["index"]].repeat(len(views))
                weight = weight.float()
                count = weight.sum().clamp(min=1)
                ce = (
                    nn.functional.cross_entropy(logits.float(), targets, reduction="none") * weight
                ).sum() / count
                acc = (correct * weight).sum() / count
            ce = self.check_finite(ce, "cross-entropy")
            loss = loss + self.ce_weight * ce
            logs.update({"train/ce_loss": ce, "train/acc": acc})
        logs["train/loss"] = loss
        self.log_dict(logs, prog_bar=True, batch_size=b)
        return loss

    # ------------------------------------------------------------------ evaluation
    def evaluation_step(self, batch: dict, stage: str, dataloader_idx: int = 0):
        if self.head is None:
            return None  # no classifier: the probe callbacks provide the metrics
        return super().evaluation_step(batch, stage, dataloader_idx)

    def variant_name(self) -> str:
        return self.hparams.get("loss", "")

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        out = {"embedding": self.embed(batch["image"]), "index": batch["index"]}
        if self.head is not None:
            out["logits"] = self.head(out["embedding"])
        return out
