"""Chroma-VAE (Yang, Kirichenko, Goldblum, Wilson, NeurIPS 2022; METHODS.md §2): both stages.

Stage 1 trains a VAE classifier whose latent ``z = (z1, z2)`` is split by ``z_p``: the decoder
reconstructs from all of ``z``, a classifier (the *z1-classifier*) sees only ``mu_1``, the
posterior mean of ``z1``. Per example the loss is ``-log p(x|z) + beta * KL(q(z|x) || N(0, I)) +
lambda * CE(y, C(mu_1))``. Because the classifier's gradient enters only through ``mu_1``, the
shortcut (the cheapest predictive feature) is pulled into ``z1`` and ``z2`` keeps "everything
else" for the reconstruction.

Stage 2 (no second script): whenever the model is evaluated after training steps, it encodes the
training set (evaluation transform, encoder frozen) and fits the *z2-classifier* on ``mu_2``
(:class:`~robustrep.evaluation.stage2.Stage2`: ``knn``, ``logistic``, ``mlp`` or ``x2``, an image
classifier on partial reconstructions ``x~2 = D([eps, mu_2])``). The fitted stage 2 is saved in
checkpoints, so ``robustrep test --ckpt_path ...`` reuses it. Validation and test report the
z2-classifier through the standard metrics (``test/acc``, ``test/worst_group_acc``, ...) and the
z1-classifier as a diagnostic under ``<stage>[/<set>]/z1/<metric>`` (it should behave like ERM).

Networks: :mod:`robustrep.backbones.vae` (the ``vae_conv`` encoder, the default backbone, and its
mirror decoder; ours, the paper publishes none). Two linear heads give ``mu`` and ``log var``.
Under DDP every rank encodes the whole training set for stage 2 (no sharding), so the kNN bank and
the seeded stage-2 classifier are identical on every rank.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from robustrep.backbones.heads import classifier_head
from robustrep.backbones.vae import ConvDecoder, partial_latent
from robustrep.errors import ConfigError
from robustrep.evaluation.features import encode_all
from robustrep.evaluation.stage2 import Stage2
from robustrep.losses.vae import gaussian_kl, reconstruction_nll, reparameterize
from robustrep.methods.base import RobustMethod


class ChromaVAE(RobustMethod):
    """Chroma-VAE: a VAE classifier on ``mu_1``, then a shortcut-free classifier on frozen ``mu_2``.

    Args:
        dim_z: latent size (paper, Colored MNIST: 32).
        z_p: fraction of the latent given to ``z1``, the classifier's part (paper: 1/4); ``dim_z1 =
            round(z_p * dim_z)``, at least 1 and at most ``dim_z - 1``.
        beta: weight of the KL term (1 = the ELBO; the paper's Table 4 ablates 0.5-100).
        classifier_weight: ``lambda`` on the cross-entropy. None (default) = the number of input
            values ``C * H * W`` [ours], since ``log p(x)`` is a sum over pixels and dwarfs
            ``log p(y|x)``. On small Colored MNIST with 25% label noise a large lambda lets z1
            memorise the noise instead of the colour; lambda = 1 isolated it (chroma_colored_mnist).
        likelihood: ``bernoulli`` (decoder logits; grey/colour MNIST-like data) or ``gaussian``
            (decoder means, fixed ``gaussian_std``; natural images such as CelebA).
        gaussian_std: observation noise of the Gaussian likelihood (pixels in [0, 1]). Smaller
            values weigh the reconstruction more against the KL.
        classifier_hidden: hidden units of the z1-classifier; 0 (default) = linear.
        kl_warmup_steps: linearly anneal ``beta`` from 0 over this many optimiser steps (0 = off).
        classifier_warmup_steps: optimiser steps with ``classifier_warmup_weight`` as lambda (0 =
            off) [ours]: a strong early pull of the shortcut into z1, then a weak lambda that does
            not memorise label noise.
        classifier_warmup_weight: lambda during the warm-up; None = ``C * H * W``.
        classifier_on: ``z1`` (Chroma-VAE) or ``z`` (all of ``mu``: the Naive-VAE-Class baseline).
        stage2: ``knn`` (default; the paper's best), ``logistic``, ``mlp``, ``x2`` (image classifier
            on partial reconstructions) or ``none``.
        stage2_on: ``z2`` (Chroma-VAE) or ``z`` (all of ``mu``: the Naive-Independent baseline).
        stage2_k: neighbours of the kNN; None = ``round(sqrt(N))`` for N training examples.
        stage2_steps, stage2_lr, stage2_batch_size, stage2_hidden: the logistic/MLP/x2 stage 2
            (Adam on random mini-batches of the standardised frozen features).
        stage2_on_validation: refit stage 2 at every validation (so ``val/acc`` tracks the
            z2-classifier and can drive checkpointing); False fits it once before testing.
        predict: which classifier fills ``logits`` (``val/acc`` ...): ``stage2`` or ``classifier``
            (the stage-1 classifier; the Naive-VAE-Class baseline).
        decoder_kwargs: ``width``/``depth``/``hidden`` of the decoder (default: ``backbone_kwargs``
            when the backbone is ``vae_conv``, else the encoder defaults).
        *args, **kwargs: see ``RobustMethod`` (``backbone`` default ``vae_conv``).
    """

    def __init__(
        self,
        *args,
        dim_z: int = 32,
        z_p: float = 0.25,
        beta: float = 1.0,
        classifier_weight: float | None = None,
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        gaussian_std: float = 0.1,
        classifier_hidden: int = 0,
        kl_warmup_steps: int = 0,
        classifier_warmup_steps: int = 0,
        classifier_warmup_weight: float | None = None,
        classifier_on: Literal["z1", "z"] = "z1",
        stage2: Literal["knn", "logistic", "mlp", "x2", "none"] = "knn",
        stage2_on: Literal["z2", "z"] = "z2",
        stage2_k: int | None = None,
        stage2_steps: int = 500,
        stage2_lr: float | None = None,
        stage2_batch_size: int | None = None,
        stage2_hidden: int = 128,
        stage2_on_validation: bool = True,
        predict: Literal["stage2", "classifier"] = "stage2",
        decoder_kwargs: dict[str, Any] | None = None,
        backbone: str | nn.Module = "vae_conv",
        **kwargs,
    ) -> None:
        super().__init__(*args, backbone=backbone, **kwargs)
        if likelihood not in ("bernoulli", "gaussian"):
            raise ConfigError(f"likelihood must be bernoulli or gaussian, got {likelihood!r}")
        if predict == "stage2" and stage2 == "none":
            raise ConfigError(
                "predict: stage2 needs a stage2 classifier (knn, logistic, mlp or x2)"
            )
        self.dim_z, self.dim_z1 = dim_z, min(max(1, round(z_p * dim_z)), dim_z - 1)
        self.beta, self.likelihood, self.gaussian_std = beta, likelihood, gaussian_std
        n_values = float(math.prod(self.image_shape))
        self.classifier_weight = n_values if classifier_weight is None else classifier_weight
        self.kl_warmup_steps = kl_warmup_steps
        self.classifier_warmup_steps = classifier_warmup_steps
        warmup_weight = classifier_warmup_weight
        self.classifier_warmup_weight = n_values if warmup_weight is None else warmup_weight
        self.effective_hparams.update(
            classifier_weight=self.classifier_weight,
            classifier_warmup_weight=self.classifier_warmup_weight,
        )
        self.classifier_on, self.stage2_on, self.predict_with = classifier_on, stage2_on, predict
        self.stage2_on_validation = stage2_on_validation
        self.mu_head = nn.Linear(self.feature_dim, dim_z)
        self.logvar_head = nn.Linear(self.feature_dim, dim_z)
        if decoder_kwargs is None and backbone == "vae_conv":
            decoder_kwargs = dict(self.hparams.get("backbone_kwargs") or {})
        self.decoder = ConvDecoder(self.image_shape, dim_z, **(decoder_kwargs or {}))
        c_in = self.dim_z1 if classifier_on == "z1" else dim_z
        self.classifier = classifier_head(c_in, classifier_hidden, self.num_classes)
        shape = self.image_shape
        options = dict(k=stage2_k, steps=stage2_steps, hidden=stage2_hidden, image_shape=shape)
        optional = {"lr": stage2_lr, "batch_size": stage2_batch_size}
        options |= {k: v for k, v in optional.items() if v is not None}
        self.stage2 = Stage2(stage2, self.num_classes, **options) if stage2 != "none" else None
        self.stage2_stale = True

    # ------------------------------------------------------------------ the VAE
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior means and log-variances (N x dim_z each; log-variance clamped to [-20, 10])."""
        h = self.backbone(images).flatten(1)
        return self.mu_head(h), self.logvar_head(h).clamp(-20.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image means in [0, 1] (Bernoulli: sigmoid of the logits; Gaussian: clamped means)."""
        out = self.decoder(z).float()
        return out.sigmoid() if self.likelihood == "bernoulli" else out.clamp(0.0, 1.0)

    def classifier_features(self, mu: torch.Tensor) -> torch.Tensor:
        return mu[:, : self.dim_z1] if self.classifier_on == "z1" else mu

    def stage2_features(self, mu: torch.Tensor) -> torch.Tensor:
        return mu[:, self.dim_z1 :] if self.stage2_on == "z2" else mu

    def partial_reconstruction(
        self, images: torch.Tensor, keep: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``x~1 = D([mu_1, eps])`` (``keep=1``) or ``x~2 = D([eps, mu_2])`` (``keep=2``),
        ``eps ~ N(0, I)``."""
        mu, _ = self.encode(images)
        return self.decode(partial_latent(mu, self.dim_z1, keep, generator))

    def decode_from_z2(
        self, mu2: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``D([eps, mu_2])`` from stored ``mu_2`` (the x~2-classifier's inputs)."""
        noise = torch.randn(mu2.shape[0], self.dim_z1, generator=generator)
        return self.decode(torch.cat([noise.to(mu2.device, mu2.dtype), mu2], 1))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The stage-2 features: ``mu_2`` (or all of ``mu`` with ``stage2_on: z``)."""
        return self.stage2_features(self.encode(images)[0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores of the predicting classifier (stage 2 unless ``predict: classifier``)."""
        mu, _ = self.encode(images)
        if self.predict_with == "classifier":
            return self.classifier(self.classifier_features(mu))
        if self.stage2 is None or not self.stage2.fitted:
            raise RuntimeError(
                "Chroma-VAE's stage 2 is not fitted yet: run fit (or load a checkpoint "
                "written after an evaluation)"
            )
        return self.stage2.scores(self.stage2_features(mu).float(), decode=self.decode_from_z2)

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-batch means of the reconstruction NLL, KL, classifier CE and the total loss."""
        x, y = batch["image"], batch["label"]
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar)
        nll = reconstruction_nll(x, self.decoder(z), self.likelihood, self.gaussian_std)
        kl = gaussian_kl(mu, logvar)
        beta = self.beta
        if self.kl_warmup_steps > 0 and self.training:
            beta = self.beta * min(1.0, (self.global_step + 1) / self.kl_warmup_steps)
        logits = self.classifier(self.classifier_features(mu))
        ce = F.cross_entropy(logits.float(), y)
        lam = self.classifier_weight
        if self.training and self.global_step < self.classifier_warmup_steps:
            lam = self.classifier_warmup_weight
        loss = (nll + beta * kl).mean() + lam * ce
        out = {"loss": loss, "nll": nll.mean(), "kl": kl.mean(), "ce": ce}
        return {**out, "logits": logits, "mu": mu}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.losses(batch)
        loss = self.check_finite(out["loss"], "Chroma-VAE loss (-ELBO + lambda * CE)")
        self.stage2_stale = True
        logs = {"train/loss": loss, **{f"train/{k}": out[k] for k in ("nll", "kl", "ce")}}
        logs["train/clf_acc"] = (out["logits"].argmax(1) == batch["label"]).float().mean()
        self.log_dict(logs, prog_bar=False, batch_size=len(batch["label"]))
        return loss

    # ------------------------------------------------------------------ stage 2
    @torch.no_grad()
    def encode_training_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu`` of every training example (evaluation transform, eval mode) and the labels."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "train_eval_dataloader"):
            raise ConfigError(
                "Chroma-VAE's stage 2 needs a robustrep datamodule (it encodes the training set)"
            )
        loader = dm.train_eval_dataloader(shard=False)
        return encode_all(self, loader, lambda images: self.encode(images)[0], self.device)

    def fit_stage2(self) -> None:
        """Fit the z2-classifier on the frozen ``mu_2`` of the training set (gradients inside)."""
        if self.stage2 is None:
            return
        with torch.inference_mode(False), torch.enable_grad():
            mu, labels = self.encode_training_set()
            features, labels = self.stage2_features(mu).clone(), labels.clone()
            self.stage2.fit(features, labels, decode=self.decode_from_z2)
        if self.stage2.kind == "knn":
            self.effective_hparams["stage2_k"] = self.stage2.state["k"]  # None = sqrt(N)
        self.stage2_stale = False

    def _maybe_fit_stage2(self, stage: str) -> None:
        skip = stage == "val" and not self.stage2_on_validation
        if self.stage2 is None or self.trainer.sanity_checking or skip:
            return
        if self.stage2_stale or not self.stage2.fitted:
            self.fit_stage2()

    def on_validation_start(self) -> None:
        self._maybe_fit_stage2("val")

    def on_test_start(self) -> None:
        self._maybe_fit_stage2("test")

    def on_predict_start(self) -> None:
        self._maybe_fit_stage2("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if (stage2 := self.stage2) is not None:
            state = {"kind": stage2.kind, "state": stage2.state, "stale": self.stage2_stale}
            checkpoint["chroma_stage2"] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("chroma_stage2")
        if saved is not None and self.stage2 is not None and saved["kind"] == self.stage2.kind:
            self.stage2.load_state(saved["state"])
            self.stage2_stale = bool(saved["stale"]) or not self.stage2.fitted

    # ------------------------------------------------------------------ evaluation
    def evaluation_step(
        self, batch: dict[str, torch.Tensor], stage: str, dataloader_idx: int = 0
    ) -> dict[str, torch.Tensor]:
        out = self.losses(batch)
        if dataloader_idx == 0:
            names = {"vae_loss": "loss", "nll": "nll", "kl": "kl"}
            values = {f"{stage}/{name}": out[key] for name, key in names.items()}
            if self.classifier_weight > 0:
                ce = "z1/ce" if self.classifier_on == "z1" else "clf_ce"
                values[f"{stage}/{ce}"] = out["ce"]
            self.log_eval(values, len(batch["label"]))
        result = {"label": batch["label"], "group": batch["group"]}
        if self.predict_with == "classifier":
            return {**result, "logits": out["logits"].detach()}
        if self.classifier_weight > 0:  # the trained z1-classifier, scored as <stage>/z1/<metric>
            result["heads"] = {"z1": out["logits"].detach()}
        fitted = self.stage2 is not None and not self.stage2_stale and self.stage2.fitted
        if self.trainer.sanity_checking or not fitted:
            # stage 2 not (re)fitted for this evaluation: only the z1-classifier is scored
            return result
        scores = self.stage2.scores(
            self.stage2_features(out["mu"]).float(), decode=self.decode_from_z2
        )
        return {**result, "logits": scores.detach()}

    def variant_name(self) -> str:
        return self.hparams.get("stage2", "")

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        return {"logits": self(batch["image"]), "index": batch["index"]}
