"""CRL-TAC's evaluation (METHODS.md section 3): probes of several representations, uniformity, the
share of policy mass on crops that hold the digit, and ``P(T|x)`` heat maps.

At test time (and every ``every_n_epochs`` on the validation sets, under ``val/``) it embeds the
first ``max_examples`` training examples and examples of the primary evaluation set *once* (all
crops through ``f`` and ``g``, :meth:`~robustrep.methods.CRLTAC.embed_variants`) and logs

- ``probe/<variant>/acc``: a logistic-regression probe
  (:func:`~robustrep.callbacks.linear_probe.fit_linear_probe`) on each representation in
  ``variants``: ``head`` / ``f`` (policy-weighted mean of ``h`` / of the trunk ``f``, the paper's
  two rows), ``head_topn`` / ``f_topn`` (mean over the ``top_n`` most probable crops; skipped for a
  uniform policy), ``head_oracle`` / ``f_oracle`` (the oracle crops), ``head_uniform`` /
  ``f_uniform``;
- ``crltac/uniformity``: Wang & Isola's average pairwise Gaussian potential
  ``mean_{i<j} exp(-t ||z_i - z_j||^2)`` with ``t = 2`` of the normalised ``head`` representation
  (the value the paper reports, lower is more uniform; ``crltac/log_uniformity`` is its log, Wang &
  Isola's loss);
- ``crltac/policy_mass_digit``: mean over images of the policy mass on crops that intersect the
  digit's box (Grid MNIST: the 28 x 28 cell in the item's ``attribute``; paper 0.998), with
  ``crltac/uniform_mass_digit`` the share of such crops (what a uniform policy scores, 0.24 on Grid
  MNIST); ``crltac/policy_mass_ink`` / ``crltac/uniform_mass_ink`` the same for crops holding any
  pixel above ``ink_threshold`` (any benchmark);
- ``crltac/policy_heatmaps``: a figure of ``heatmaps`` images above their ``P(T|x)`` on the crop
  grid (brighter = more probable), saved under ``<run dir>/images`` and logged to W&B.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Subset

from robustrep.callbacks.images import log_figure
from robustrep.callbacks.protocols import CropPolicyModel, require
from robustrep.callbacks.schedule import validation_due
from robustrep.errors import ConfigError
from robustrep.evaluation.features import fit_linear_probe

#: Variant name -> (output, weighting) of :meth:`CRLTAC.embed_variants`.
VARIANTS = {
    "head": ("head", "policy"),
    "f": ("trunk", "policy"),
    "head_topn": ("head", "top_n"),
    "f_topn": ("trunk", "top_n"),
    "head_oracle": ("head", "oracle"),
    "f_oracle": ("trunk", "oracle"),
    "head_uniform": ("head", "uniform"),
    "f_uniform": ("trunk", "uniform"),
}


def gaussian_potential(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Average pairwise Gaussian potential ``mean_{i<j} exp(-t ||z_i - z_j||^2)`` (Wang & Isola,
    2020).
    """
    z = z.float()
    return torch.exp(-t * torch.pdist(z).pow(2)).mean()


def boxes_crop_mask(offsets: torch.Tensor, crop_size: int, boxes: torch.Tensor) -> torch.Tensor:
    """``B x T`` bool: crop ``t`` (``offsets`` T x 2 top/left) intersects box ``b`` (B x 4: top,
    left, bottom, right; exclusive).
    """
    top, left = offsets[None, :, 0], offsets[None, :, 1]
    rows = (top < boxes[:, 2:3]) & (top + crop_size > boxes[:, 0:1])
    cols = (left < boxes[:, 3:4]) & (left + crop_size > boxes[:, 1:2])
    return rows & cols


def ink_crop_mask(
    images: torch.Tensor, offsets: torch.Tensor, crop_size: int, threshold: float
) -> torch.Tensor:
    """``B x T`` bool: crop ``t`` holds a pixel above ``threshold`` (per-pixel max over
    channels).
    """
    ink = (images.amax(1) > threshold).float()  # B x H x W
    summed = torch.nn.functional.pad(ink.cumsum(1).cumsum(2), (1, 0, 1, 0))  # integral image
    y, x = offsets[:, 0], offsets[:, 1]
    c = crop_size
    count = summed[:, y + c, x + c] - summed[:, y, x + c] - summed[:, y + c, x] + summed[:, y, x]
    return count > 0


class CRLTACMetrics(pl.Callback):
    """Probes, uniformity, policy mass on the digit and heat maps of a
    :class:`~robustrep.methods.CRLTAC`.

    Args:
        variants: representations to probe (keys of :data:`VARIANTS`); ``top_n`` variants are
            skipped for a uniform policy.
        max_examples: embed at most this many training and evaluation examples (the first ones;
            all crops of every image go through the encoder, ~289x the cost of a plain embedding).
            None = all.
        every_n_epochs: also run on the primary validation set every n epochs (``val/...``); 0 =
            test only.
        ink_threshold: pixel value above which a crop counts as holding ink.
        uniformity_t: ``t`` of the Gaussian potential (2 as in the paper and Wang & Isola).
        heatmaps: number of images in the heat-map figure (0 = none).
        C, max_iter: the logistic regression of the probes.
    """

    def __init__(
        self,
        variants: list[str] | None = None,
        max_examples: int | None = 2000,
        every_n_epochs: int = 0,
        ink_threshold: float = 0.2,
        uniformity_t: float = 2.0,
        heatmaps: int = 8,
        C: float = 1.0,
        max_iter: int = 500,
    ) -> None:
        self.variants = (
            list(variants)
            if variants is not None
            else ["head", "f", "head_topn", "f_topn", "f_oracle"]
        )
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ConfigError(
                f"CRLTACMetrics: unknown variants {unknown}; choose from {sorted(VARIANTS)}"
            )
        self.max_examples = max_examples
        self.every_n_epochs = every_n_epochs
        self.ink_threshold = ink_threshold
        self.uniformity_t = uniformity_t
        self.heatmaps = heatmaps
        self.C = C
        self.max_iter = max_iter
        self.last: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        require(CropPolicyModel, pl_module, "CRLTACMetrics")
        if trainer.datamodule is None or not hasattr(trainer.datamodule, "train_eval_dataset"):
            raise ConfigError("CRLTACMetrics needs a robustrep datamodule")

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not validation_due(trainer, self.every_n_epochs):
            return
        self._log(pl_module, self.compute(trainer, pl_module, "val"))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module, self.compute(trainer, pl_module, "test"))

    def _log(self, pl_module: pl.LightningModule, values: dict[str, float]) -> None:
        for name, value in values.items():
            pl_module.log(
                name, value, add_dataloader_idx=False, sync_dist=False, rank_zero_only=False
            )
        self.last.update(values)

    # ------------------------------------------------------------------ work
    def _loader(self, dm, dataset) -> DataLoader:
        if self.max_examples is not None and len(dataset) > self.max_examples:
            dataset = Subset(dataset, range(self.max_examples))
        return DataLoader(
            dataset, batch_size=dm.eval_batch_size, shuffle=False, num_workers=dm.num_workers
        )

    def _active(self, pl_module) -> dict[str, tuple[str, str]]:
        active = {
            v: VARIANTS[v]
            for v in self.variants
            if not (VARIANTS[v][1] == "top_n" and not pl_module.learned_policy)
        }
        active.setdefault("head", VARIANTS["head"])  # uniformity uses it
        return active

    @torch.no_grad()
    def extract(self, pl_module, loader, with_masks: bool, cell_size: int | None = None) -> dict:
        """Features of every active variant, labels, and (for the eval set) the masses and a few
        heat maps.
        """
        was_training = pl_module.training
        pl_module.eval()
        active = self._active(pl_module)
        feats: dict[str, list[torch.Tensor]] = {v: [] for v in active}
        labels, mass, first = (
            [],
            {"digit": [], "ink": [], "uniform_digit": [], "uniform_ink": []},
            None,
        )
        offsets = pl_module.offsets
        for batch in loader:
            images = batch["image"].to(pl_module.device)
            if with_masks:
                out = pl_module.crop_outputs(images)
                result = {}
                for name, (output, weighting) in active.items():
                    w = pl_module.crop_weights(images, out["probs"], weighting)
                    pooled = torch.einsum(
                        "bt,btd->bd", w, out["h"] if output == "head" else out["f"]
                    )
                    result[name] = (
                        torch.nn.functional.normalize(pooled, dim=1) if output == "head" else pooled
                    )
                probs = out["probs"]
                ink = ink_crop_mask(images, offsets, pl_module.crop_size, self.ink_threshold)
                mass["ink"].append((probs * ink).sum(1).cpu())
                mass["uniform_ink"].append(ink.float().mean(1).cpu())
                if "attribute" in batch and cell_size is not None:
                    from robustrep.data.digit_compositions import cell_box

                    digit = boxes_crop_mask(
                        offsets,
                        pl_module.crop_size,
                        cell_box(batch["attribute"], cell_size).to(images.device),
                    )
                    mass["digit"].append((probs * digit).sum(1).cpu())
                    mass["uniform_digit"].append(digit.float().mean(1).cpu())
                if first is None:
                    first = (images[: self.heatmaps].cpu(), probs[: self.heatmaps].cpu())
            else:
                got = pl_module.embed_variants(images, list(active.values()))
                result = {name: got[key] for name, key in active.items()}
            for name in active:
                feats[name].append(result[name].float().cpu())
            labels.append(torch.as_tensor(batch["label"]))
        pl_module.train(was_training)
        return {
            "features": {k: torch.cat(v) for k, v in feats.items()},
            "label": torch.cat(labels),
            "mass": {k: torch.cat(v) for k, v in mass.items() if v},
            "first": first,
        }

    def compute(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> dict[str, float]:
        """Fit the probes on training features, score the primary ``stage`` set; returns the
        metrics.
        """
        dm = trainer.datamodule
        sets = dm.splits.val if stage == "val" else dm.splits.test
        eval_ds = dm.eval_dataset(next(iter(sets.values())))
        train = self.extract(pl_module, self._loader(dm, dm.train_eval_dataset()), with_masks=False)
        data = self.extract(
            pl_module,
            self._loader(dm, eval_ds),
            with_masks=True,
            cell_size=getattr(dm, "cell_size", None),
        )
        base = "" if stage == "test" else "val/"
        values: dict[str, float] = {}
        num_classes = int(train["label"].max()) + 1
        for name in self._active(pl_module):
            if name not in self.variants:
                continue
            predict = fit_linear_probe(
                train["features"][name],
                train["label"],
                num_classes,
                self.C,
                self.max_iter,
                device=pl_module.device,
            )
            values[f"{base}probe/{name}/acc"] = float(
                (predict(data["features"][name]) == data["label"]).float().mean()
            )
        potential = gaussian_potential(data["features"]["head"], self.uniformity_t)
        values[f"{base}crltac/uniformity"] = float(potential)
        values[f"{base}crltac/log_uniformity"] = float(potential.log())
        for key, tensor in data["mass"].items():
            name = f"uniform_mass_{key[8:]}" if key.startswith("uniform_") else f"policy_mass_{key}"
            values[f"{base}crltac/{name}"] = float(tensor.mean())
        if self.heatmaps > 0 and data["first"] is not None:
            self._heatmaps(trainer, pl_module, f"{base}crltac/policy_heatmaps", *data["first"])
        return values

    def _heatmaps(
        self, trainer, pl_module, key: str, images: torch.Tensor, probs: torch.Tensor
    ) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = images.shape[0]
        fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
        for i in range(n):
            axes[0, i].imshow(images[i].float().mean(0), cmap="gray", vmin=0, vmax=1)
            axes[1, i].imshow(probs[i].view(*pl_module.grid_shape), cmap="magma")
            axes[1, i].set_title(f"max {probs[i].max():.3f}", fontsize=7)
            for ax in axes[:, i]:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle("P(T|x): crop top-left corners (brighter = more probable)", fontsize=8)
        log_figure(trainer, key, fig)

    def state_dict(self) -> dict:
        return {"last": self.last}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last = dict(state_dict.get("last", {}))


__all__ = ["CRLTACMetrics", "VARIANTS", "boxes_crop_mask", "gaussian_potential", "ink_crop_mask"]
