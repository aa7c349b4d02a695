"""IP-IRM: self-supervised learning made invariant across iteratively found partitions of the data.

Paper: Wang, Yue, Huang, Sun, Zhang, "Self-Supervised Learning Disentangled Group Representation as
Feature" (NeurIPS 2021), and its VIPriors report; METHODS.md section 5.

Every training example comes with two augmented views (``data.num_views: 2``,
``data.augment: contrastive``) and its dataset ``index``. The module keeps a growing list of
*partitions*: each maps the ``N`` training indices to ``K`` subsets (a ``P x N`` integer tensor,
identical on every DDP rank, saved in checkpoints). Two alternating steps:

- **Minimisation** (every batch): ``L = ssl_weight * L_ssl + mean over (partition, subset) of
  [L_k + lambda1 * (dL_k/dw at w=1)^2]``, where ``L_k`` is NT-Xent among the batch members of subset
  ``k`` (negatives restricted to the subset) and ``w`` a scalar dummy scale on its logits (IRMv1,
  closed form, :mod:`robustrep.losses.irm`). All subsets of all partitions (and SimCLR's full-batch
  loss) come from one similarity matrix per batch. Subsets with fewer than two examples in the
  (global) batch are left out of the mean.
- **Maximisation** (before epoch 0, then every ``partition_every`` epochs): the encoder is frozen,
  the projections of two augmented views of all ``N`` training examples are computed (sharded over
  ranks and gathered), and a continuous ``N x K`` logit matrix (softmax per example, fresh N(0, 1)
  start) is optimised with Adam to *maximise* ``mean_k L_k + lambda2 * mean_k G_k^2`` minus
  ``balance_weight * relu(H_target - H(mean assignment))``, on shuffled chunks of
  ``maximise_batch_size`` examples (so memory is bounded by the chunk, not by ``N``). The best
  epoch's matrix is thresholded by argmax, optionally repaired to the balance target, broadcast from
  rank 0 and appended.

``base: simsiam`` swaps SimCLR's full-batch NT-Xent for SimSiam's symmetric negative cosine with a
predictor (no negatives); the subset NT-Xent terms are then computed on the projector outputs.
``invariance: false`` gives the plain SimCLR / SimSiam baseline with the same network and budget.
There is no classifier: evaluate with the :class:`~robustrep.callbacks.LinearProbe` and
:class:`~robustrep.callbacks.KNNMonitor` callbacks.

Choices (public code in ``reference_code.md`` section 5): scalar dummy scale instead of its
per-column ones vector; the soft maximisation loss weights negatives by their subset probability
without renormalising (so a 0/1 assignment gives exactly the minimisation loss); every maximisation
starts from a fresh random matrix; early stopping keeps the best epoch after ``maximise_patience``
epochs without improvement.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from robustrep.backbones.heads import predictor_head, projection_head
from robustrep.distributed import gather_no_grad, gather_with_grad, is_distributed, rank
from robustrep.errors import ConfigError
from robustrep.evaluation.features import gathered_view_features
from robustrep.losses.contrastive import simsiam_loss
from robustrep.losses.irm import partition_losses
from robustrep.losses.partition import append_partition, maximise_partition, subset_assignments
from robustrep.methods.base import RobustMethod

BASES = ("simclr", "simsiam")


class IPIRM(RobustMethod):
    """SimCLR or SimSiam with IP-IRM's partition-invariance term (see the module docstring).

    Args:
        base: ``simclr`` (NT-Xent over the full batch) or ``simsiam`` (negative cosine + predictor).
        invariance: add the partition terms and run the maximisation step; False = the plain base.
        temperature: temperature of every NT-Xent term (the paper's tau, 0.5).
        irm_temperature: temperature of the logits inside the IRM derivative (public code
            ``irm_temp`` 0.5).
        lambda1: weight of the IRM penalty in the minimisation step (paper 0.2).
        lambda2: weight of the IRM penalty in the maximisation objective (paper 0.5; 0.2 for plain
            CIFAR-100 in the public scripts).
        ssl_weight: weight of the full-batch SSL loss (1 = the public code's ``--keep_cont``).
        num_subsets: K, subsets per partition (paper 2).
        partition_every: epochs between maximisation steps (paper 50); one also runs before epoch 0.
        max_partitions: keep only the newest this many partitions; None = keep all
            (``retain_group``).
        maximise_epochs: passes over the feature bank per maximisation (public code stops at 60).
        maximise_lr: Adam learning rate of the partition logits (public code 0.5).
        maximise_milestones: epochs at which that rate is multiplied by 0.2 (public code 5, 35).
        maximise_batch_size: examples per chunk of the maximisation; memory grows with its square
            (2048 ~ 0.3 GiB), not with N (public code 3096).
        maximise_patience: stop after this many epochs without a better objective (keep the best).
        balance_ratio: balance target - the largest subset at most this many times each other one,
            as an entropy target on the mean soft assignment (2.0 = the public code's 0.6365 nats).
        balance_weight: weight of ``relu(H_target - H(mean assignment))`` in the maximisation.
        enforce_balance: after argmax, move the most probable members into any subset below its
            minimum share so the hard partition meets the target exactly.
        partition_seed: seed of the maximisation's initial matrix and chunk order.
        projection_dim, projection_hidden: the projection MLP (Linear-BN-ReLU-Linear; paper 512 ->
            128).
        predictor_hidden: hidden width of SimSiam's predictor; None = ``projection_dim // 4``.
        gather_distributed: under DDP, contrast against the gathered global batch (with gradients).
        *args, **kwargs: see ``RobustMethod`` (backbone, optimizer, metadata).
    """

    required_keys = ("views", "index")
    selection_metric = None  # self-supervised: probes give the accuracy; test the last epoch

    def __init__(
        self,
        *args,
        base: str = "simclr",
        invariance: bool = True,
        temperature: float = 0.5,
        irm_temperature: float = 0.5,
        lambda1: float = 0.2,
        lambda2: float = 0.5,
        ssl_weight: float = 1.0,
        num_subsets: int = 2,
        partition_every: int = 50,
        max_partitions: int | None = None,
        maximise_epochs: int = 60,
        maximise_lr: float = 0.5,
        maximise_milestones: Sequence[int] = (5, 35),
        maximise_batch_size: int = 2048,
        maximise_patience: int = 5,
        balance_ratio: float = 2.0,
        balance_weight: float = 1.0,
        enforce_balance: bool = True,
        partition_seed: int = 0,
        projection_dim: int = 128,
        projection_hidden: int = 512,
        predictor_hidden: int | None = None,
        gather_distributed: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if base not in BASES:
            raise ConfigError(f"IPIRM: unknown base {base!r}; choose one of {', '.join(BASES)}")
        if temperature <= 0 or irm_temperature <= 0:
            raise ConfigError(
                f"IPIRM: temperatures must be > 0, got temperature={temperature}, "
                f"irm_temperature={irm_temperature}"
            )
        if num_subsets < 2:
            raise ConfigError(f"IPIRM: num_subsets must be >= 2, got {num_subsets}")
        if partition_every < 1:
            raise ConfigError(
                "IPIRM: partition_every must be >= 1 (use invariance: false for no "
                f"partitions), got {partition_every}"
            )
        if max_partitions is not None and max_partitions < 1:
            raise ConfigError(f"IPIRM: max_partitions must be >= 1 or None, got {max_partitions}")
        self.base, self.invariance = base, invariance
        self.temperature, self.irm_temperature = temperature, irm_temperature
        self.lambda1, self.lambda2, self.ssl_weight = lambda1, lambda2, ssl_weight
        self.num_subsets, self.partition_every = num_subsets, partition_every
        self.max_partitions, self.partition_seed = max_partitions, partition_seed
        self.gather_distributed = gather_distributed
        # the maximisation step's settings, passed to losses.partition.maximise_partition
        self.maximise = dict(epochs=maximise_epochs, lr=maximise_lr, batch_size=maximise_batch_size)
        self.maximise.update(milestones=list(maximise_milestones), patience=maximise_patience)
        self.maximise.update(balance_ratio=balance_ratio, balance_weight=balance_weight)
        self.maximise["enforce_balance"] = enforce_balance
        self.projection = projection_head(
            self.feature_dim, projection_hidden, projection_dim, simsiam=base == "simsiam"
        )
        predictor_hidden = predictor_hidden or max(projection_dim // 4, 1)
        self.effective_hparams["predictor_hidden"] = predictor_hidden
        self.predictor = (
            predictor_head(projection_dim, predictor_hidden) if base == "simsiam" else None
        )
        # P x N, -1 = not covered
        self.register_buffer("partitions", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        # the epoch before which each stored partition was made
        self.partition_epochs: list[int] = []

    # ------------------------------------------------------------------ partitions as state
    @property
    def num_partitions(self) -> int:
        return int(self.partitions.shape[0])

    def add_partition(self, assignment: torch.Tensor, epoch: int) -> None:
        """Append one partition (N subset ids by dataset index, -1 = none), dropping the oldest
        beyond ``max_partitions``."""
        grown = append_partition(self.partitions, assignment)
        epochs = [*self.partition_epochs, epoch]
        if self.max_partitions is not None and grown.shape[0] > self.max_partitions:
            grown, epochs = grown[-self.max_partitions :], epochs[-self.max_partitions :]
        self.partitions = grown
        self.partition_epochs = epochs

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ipirm"] = {
            "partitions": self.partitions.cpu(),
            "partition_epochs": list(self.partition_epochs),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("ipirm")
        if state is not None:
            self.partitions = state["partitions"].to(self.partitions.device)
            self.partition_epochs = list(state["partition_epochs"])

    # ------------------------------------------------------------------ model
    def project(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised projections (the features the partitions are found on)."""
        return F.normalize(self.projection(self.embed(images)).float(), dim=1)

    # ------------------------------------------------------------------ minimisation
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        views = batch["views"]
        if len(views) < 2:
            raise ConfigError("IPIRM needs two views per example: set data.num_views: 2")
        index = batch["index"]
        b = index.shape[0]
        z = self.projection(self.embed(torch.cat([views[0], views[1]])))
        z1, z2 = z[:b], z[b:]
        gather = self.gather_distributed and is_distributed()
        g1, g2 = (gather_with_grad(z1), gather_with_grad(z2)) if gather else (z1, z2)
        g_index = gather_no_grad(index) if gather else index
        no_partition = g_index.new_zeros(0, g_index.shape[0])
        assign = subset_assignments(self.partitions, g_index) if self.invariance else no_partition
        logs: dict[str, torch.Tensor] = {}
        simclr = self.base == "simclr"
        if not simclr:
            assert self.predictor is not None
            p = self.predictor(z)
            ssl = simsiam_loss(p[:b], p[b:], z1, z2)
        terms = {}
        if simclr or assign.shape[0]:
            taus = (self.temperature, self.irm_temperature)
            terms = partition_losses(g1, g2, assign, self.num_subsets, *taus, full_batch=simclr)
        if simclr:
            ssl = terms["full"]
        loss = self.ssl_weight * self.check_finite(ssl, f"{self.base} loss")
        logs["train/ssl_loss"] = ssl
        if assign.shape[0]:
            valid = terms["valid"]
            n_valid = valid.sum().clamp_min(1)
            subset = (terms["subset_loss"] * valid).sum() / n_valid
            penalty = (terms["subset_grad"].pow(2) * valid).sum() / n_valid
            inv = self.check_finite(subset + self.lambda1 * penalty, "IP-IRM subset loss")
            loss = loss + inv
            logs.update({"train/subset_loss": subset, "train/irm_penalty": penalty})
        logs["train/loss"] = loss
        self.log_dict(logs, prog_bar=True, batch_size=b)
        return loss

    # ------------------------------------------------------------------ maximisation
    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        due = epoch % self.partition_every == 0 and epoch not in self.partition_epochs
        if self.invariance and due:
            self.update_partitions(epoch)

    def update_partitions(self, epoch: int) -> torch.Tensor:
        """Run one maximisation step on the current encoder and append the result; returns it."""
        index, f1, f2 = self.bank_features()
        trainer = self._trainer
        show = rank() == 0 and trainer is not None and trainer.progress_bar_callback is not None
        progress = f"IP-IRM partition {len(self.partition_epochs) + 1} (epoch {epoch})"
        assign = maximise_partition(
            f1,
            f2,
            num_subsets=self.num_subsets,
            tau=self.temperature,
            irm_tau=self.irm_temperature,
            lambda2=self.lambda2,
            **self.maximise,
            seed=self.partition_seed + 1000 * len(self.partition_epochs) + epoch,
            progress=progress if show else None,
        )
        if is_distributed():
            torch.distributed.broadcast(assign, src=0)  # bit-identical partitions on every rank
        full = torch.full((int(index.max()) + 1,), -1, dtype=torch.long, device=assign.device)
        full[index] = assign
        self.add_partition(full, epoch)
        sizes = torch.bincount(assign, minlength=self.num_subsets).float() / assign.numel()
        if self._trainer is not None:
            self.log(
                "train/partition_min_share", sizes.min(), rank_zero_only=False, sync_dist=False
            )
        return full

    @torch.no_grad()
    def bank_features(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(index, f1, f2)``: dataset indices and normalised projections of two augmented views of
        every training example (eval mode; sharded over ranks and gathered, so every rank holds
        all)."""
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "train_views_loader"):
            raise ConfigError(
                "IPIRM needs a robustrep datamodule (with "
                "train_views_loader) for its partition step"
            )
        loader = dm.train_views_loader()  # padded shards under DDP, so the gathers line up
        return gathered_view_features(self, loader, self.project, self.device)

    # ------------------------------------------------------------------ evaluation (probes only)
    def evaluation_step(self, batch: dict, stage: str, dataloader_idx: int = 0):
        return None  # no classifier: LinearProbe / KNNMonitor report the metrics

    def variant_name(self) -> str:
        return self.base + ("+invariance" if self.invariance else "")

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return {"embedding": self.embed(batch["image"]), "index": batch["index"]}
