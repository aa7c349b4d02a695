"""Chroma-VAE diagnostics (METHODS.md §2; paper figs. 3, 4b, 4c): is the shortcut isolated in z1?

At the end of every ``every_n_epochs``-th validation and of every test, for a model with
``encode``, ``decode``, ``partial_reconstruction`` and ``dim_z1``
(:class:`~robustrep.methods.ChromaVAE`):

- **partial reconstructions** of a fixed set of validation images, one row per image:
  the image, ``num_samples`` draws of ``x~1 = D([mu_1, eps])`` and of ``x~2 = D([eps, mu_2])``
  (``<stage>/chroma/partial_reconstructions``). If the shortcut lives in z1, every x~1 keeps it and
  x~2 varies it.
- **counterfactual latent shift**: ``mean_x |mu(x)_i - mu(x')_i|`` per latent dimension ``i`` over
  up to ``max_examples`` training images and their counterfactual copies ``x'`` (``swap_channels``:
  the two channels in ``swap`` exchanged - the colour flip of red/green Colored MNIST), as a bar
  plot (``<stage>/chroma/counterfactual_shift``) and the scalars ``<stage>/chroma/cf_shift_z1`` /
  ``cf_shift_z2`` (mean over the dimensions of each part; the prior std is 1).
- **attribute probe**: logistic regression predicting the binary attribute from ``mu_2`` (and
  ``mu_1``) on the training images plus their counterfactual copies (attribute flipped), so the
  attribute is independent of everything else; fitted on half of the pairs, scored on the other half
  (``<stage>/chroma/attr_probe_z2``, ``attr_probe_z1``; 0.5 = not decodable).
- **stage-2 flip rate**: the fraction of those training images whose z2-classifier prediction
  changes when the counterfactual is applied (``<stage>/chroma/stage2_flip_rate``; 0 = the
  prediction ignores the attribute). Linear decodability alone overstates what a distance-based
  z2-kNN reads: an attribute kept in ``mu_2`` at a small scale is still linearly decodable but
  barely moves the nearest neighbours. Needs a fitted stage 2 (skipped otherwise).
- **active units** (Burda et al., 2016): the number of latent dimensions whose posterior mean varies
  over the training images (``Var_x[mu_i] > active_threshold``), in z1 and in z2
  (``<stage>/chroma/active_z1``, ``active_z2``). The rest have collapsed to the prior. z1 isolates
  the shortcut only if it is a bottleneck: if ``dim_z1`` is not small next to the number of active
  units, z1 has room for the task features too - lower ``z_p`` (the paper tunes ``z_p`` on the
  partial reconstructions, without group labels).

PNGs go to ``<run dir>/images``; W&B gets the same pictures (``callbacks.images``).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch

from robustrep.callbacks.images import log_figure, log_image_grid
from robustrep.callbacks.protocols import ChromaModel, require
from robustrep.callbacks.schedule import validation_due


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Displayable images: 2-channel (red/green) images get a zero blue channel; 1 and 3 channels
    unchanged.
    """
    if images.shape[1] == 2:
        return torch.cat([images, torch.zeros_like(images[:, :1])], 1)
    return images


class ChromaDiagnostics(pl.Callback):
    """Partial reconstructions, counterfactual latent shift and attribute probes of a Chroma-VAE.

    Args:
        num_images: validation images shown in the reconstruction grid.
        num_samples: noise draws of x~1 and of x~2 per image.
        counterfactual: ``swap_channels`` (exchange the channels in ``swap``) or ``none`` (skip the
            shift plot and the probes).
        swap: the two channels exchanged by ``swap_channels`` (red/green: ``[0, 1]``).
        max_examples: training images used for the shift and the probes.
        every_n_epochs: run after every n-th validation (tests always run).
        seed: seed of the noise draws (the same samples every epoch).
        active_threshold: a latent dimension is active when its posterior mean's variance over
            the training images exceeds this (0.01, Burda et al.'s choice; the prior variance is 1).
    """

    def __init__(
        self,
        num_images: int = 8,
        num_samples: int = 4,
        counterfactual: str = "swap_channels",
        swap: Sequence[int] = (0, 1),
        max_examples: int = 2000,
        every_n_epochs: int = 1,
        seed: int = 0,
        active_threshold: float = 0.01,
    ) -> None:
        if counterfactual not in ("swap_channels", "none"):
            raise ValueError(
                f"counterfactual must be swap_channels or none, got {counterfactual!r}"
            )
        self.num_images, self.num_samples = num_images, num_samples
        self.counterfactual, self.swap = counterfactual, tuple(swap)
        self.max_examples, self.every_n_epochs, self.seed = max_examples, every_n_epochs, seed
        self.active_threshold = active_threshold
        self.last: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        require(ChromaModel, pl_module, "ChromaDiagnostics")

    # ------------------------------------------------------------------ pieces
    def flip(self, images: torch.Tensor) -> torch.Tensor:
        """The counterfactual copy: channels ``swap`` exchanged."""
        a, b = self.swap
        out = images.clone()
        out[:, a], out[:, b] = images[:, b], images[:, a]
        return out

    @torch.no_grad()
    def reconstruction_grid(self, pl_module, images: torch.Tensor) -> torch.Tensor:
        """Rows: image, x~1 samples, x~2 samples (N * (1 + 2 S) images)."""
        gen = torch.Generator().manual_seed(self.seed)
        rows = [images[:, None]]
        for keep in (1, 2):
            samples = [
                pl_module.partial_reconstruction(images, keep, generator=gen)
                for _ in range(self.num_samples)
            ]
            rows.append(torch.stack(samples, 1))
        grid = torch.cat([r.float().cpu() for r in rows], 1)
        return to_rgb(grid.flatten(0, 1))

    @torch.no_grad()
    def latent_pairs(
        self, pl_module, loader
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``mu(x)``, ``mu(x')`` (None without a counterfactual) and the attributes of up to
        ``max_examples`` training images."""
        mus, flipped, attrs = [], [], []
        seen = 0
        for batch in loader:
            x = batch["image"][: self.max_examples - seen].to(pl_module.device)
            mus.append(pl_module.encode(x)[0].float().cpu())
            if self.counterfactual != "none":
                flipped.append(pl_module.encode(self.flip(x))[0].float().cpu())
            if "attribute" in batch:
                attrs.append(batch["attribute"][: x.shape[0]].cpu())
            seen += x.shape[0]
            if seen >= self.max_examples:
                break
        return (
            torch.cat(mus),
            torch.cat(flipped) if flipped else None,
            torch.cat(attrs) if attrs else None,
        )

    @staticmethod
    def active_units(mu: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
        """Boolean mask of the latent dimensions whose mean varies over the examples (N x D ->
        D).
        """
        return mu.var(0) > threshold

    @staticmethod
    def probe_accuracy(
        features: torch.Tensor, features_cf: torch.Tensor, attributes: torch.Tensor
    ) -> float:
        """Held-out accuracy of a logistic regression predicting the attribute from (x, x')
        pairs.
        """
        from sklearn.linear_model import LogisticRegression

        n = features.shape[0]
        half = n // 2
        x = torch.cat([features, features_cf]).numpy()
        y = torch.cat([attributes, 1 - attributes]).numpy()
        train = list(range(half)) + list(range(n, n + half))
        test = list(range(half, n)) + list(range(n + half, 2 * n))
        if len(set(y[train].tolist())) < 2 or not test:
            return float("nan")
        clf = LogisticRegression(max_iter=1000).fit(x[train], y[train])
        return float(clf.score(x[test], y[test]))

    @staticmethod
    @torch.no_grad()
    def stage2_flip_rate(pl_module, mu: torch.Tensor, mu_cf: torch.Tensor) -> float | None:
        """Fraction of examples whose stage-2 prediction differs between ``mu`` and ``mu_cf``
        (None when the model has no fitted, up-to-date stage 2)."""
        stage2 = getattr(pl_module, "stage2", None)
        if stage2 is None or not stage2.fitted or getattr(pl_module, "stage2_stale", False):
            return None
        decode = getattr(pl_module, "decode_from_z2", None)  # the x2 stage 2 decodes its inputs
        feats, feats_cf = (
            pl_module.stage2_features(mu).float(),
            pl_module.stage2_features(mu_cf).float(),
        )
        pred, pred_cf = (
            stage2.scores(feats, decode=decode).argmax(1),
            stage2.scores(feats_cf, decode=decode).argmax(1),
        )
        return float((pred != pred_cf).float().mean())

    def shift_figure(self, shift: torch.Tensor, dim_z1: int):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(4.0, 0.22 * len(shift)), 2.6))
        colours = ["tab:red" if i < dim_z1 else "tab:blue" for i in range(len(shift))]
        ax.bar(range(len(shift)), shift.numpy(), color=colours)
        ax.axvline(dim_z1 - 0.5, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlabel("latent dimension (red: z1, blue: z2)")
        ax.set_ylabel("mean |mu(x) - mu(x')|")
        ax.set_title("latent shift under the counterfactual")
        return fig

    # ------------------------------------------------------------------ running
    def run(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> dict[str, float]:
        dm = trainer.datamodule
        was_training = pl_module.training
        pl_module.eval()
        values: dict[str, float] = {}
        loaders = dm.val_dataloader()
        val_set = loaders[0].dataset if loaders else dm.train_eval_dataset()
        n = min(self.num_images, len(val_set))
        images = torch.stack([val_set[i]["image"] for i in range(n)]).to(pl_module.device)
        log_image_grid(
            trainer,
            f"{stage}/chroma/partial_reconstructions",
            self.reconstruction_grid(pl_module, images),
            nrow=1 + 2 * self.num_samples,
        )
        mu, mu_cf, attrs = self.latent_pairs(pl_module, dm.train_eval_dataloader(shard=False))
        d1 = pl_module.dim_z1
        active = self.active_units(mu, self.active_threshold)
        values[f"{stage}/chroma/active_z1"] = float(active[:d1].sum())
        values[f"{stage}/chroma/active_z2"] = float(active[d1:].sum())
        if mu_cf is not None:
            shift = (mu - mu_cf).abs().mean(0)
            values[f"{stage}/chroma/cf_shift_z1"] = float(shift[:d1].mean())
            values[f"{stage}/chroma/cf_shift_z2"] = float(shift[d1:].mean())
            log_figure(
                trainer, f"{stage}/chroma/counterfactual_shift", self.shift_figure(shift, d1)
            )
            if attrs is not None and int(attrs.max()) <= 1:
                values[f"{stage}/chroma/attr_probe_z1"] = self.probe_accuracy(
                    mu[:, :d1], mu_cf[:, :d1], attrs
                )
                values[f"{stage}/chroma/attr_probe_z2"] = self.probe_accuracy(
                    mu[:, d1:], mu_cf[:, d1:], attrs
                )
            rate = self.stage2_flip_rate(
                pl_module, mu.to(pl_module.device), mu_cf.to(pl_module.device)
            )
            if rate is not None:
                values[f"{stage}/chroma/stage2_flip_rate"] = rate
        pl_module.train(was_training)
        for key, value in values.items():
            pl_module.log(key, value, sync_dist=False)
        self.last.update(values)
        return values

    def on_validation_epoch_end(self, trainer, pl_module):
        if not validation_due(trainer, self.every_n_epochs):
            return
        self.run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module):
        self.run(trainer, pl_module, "test")
