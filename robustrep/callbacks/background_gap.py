"""Background Challenge evaluation: accuracy per named eval set and the background gap.

``BG-Gap = acc(mixed_same) - acc(mixed_rand)`` (Xiao et al., 2021): how much accuracy a model loses
when the background of an image is replaced by a random class's instead of one of its own class.

The callback does not evaluate anything itself: it reads the per-set accuracies the
:class:`~robustrep.callbacks.GroupMetrics` callback accumulates (every
:class:`~robustrep.methods.base.RobustMethod` adds one), so it works with any method and costs
nothing. At the end of every validation and test epoch it logs

* ``<stage>/<set>/acc`` for the *primary* set as well (GroupMetrics logs that one as
  ``<stage>/acc``), so tables can show ``test/original/acc`` beside ``test/mixed_same/acc``;
* ``<stage>/bg_gap`` when both ``same_set`` and ``rand_set`` are among the stage's eval sets.
"""

from __future__ import annotations

import lightning.pytorch as pl

from robustrep.callbacks.group_metrics import GroupMetrics


def background_gap(
    accuracies: dict[str, float], same_set: str = "mixed_same", rand_set: str = "mixed_rand"
) -> float | None:
    """``accuracies[same_set] - accuracies[rand_set]``, or None when either set is missing."""
    if same_set not in accuracies or rand_set not in accuracies:
        return None
    return accuracies[same_set] - accuracies[rand_set]


class BackgroundGap(pl.Callback):
    """Logs ``<stage>/<set>/acc`` for every named eval set and ``<stage>/bg_gap``.

    Args:
        same_set: name of the eval set whose backgrounds come from the same class (``mixed_same``).
        rand_set: name of the eval set with random-class backgrounds (``mixed_rand``).
    """

    def __init__(self, same_set: str = "mixed_same", rand_set: str = "mixed_rand") -> None:
        self.same_set = same_set
        self.rand_set = rand_set
        self.last: dict[str, float] = {}

    def _group_metrics(self, trainer: pl.Trainer) -> GroupMetrics:
        found = [cb for cb in trainer.callbacks if isinstance(cb, GroupMetrics)]
        if not found:
            raise RuntimeError(
                "BackgroundGap reads the accuracies of the GroupMetrics callback, which is not "
                "attached; use a robustrep method (they add it) or add "
                "robustrep.callbacks.GroupMetrics to trainer.callbacks"
            )
        return found[0]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._group_metrics(trainer)

    def accuracies(self, trainer: pl.Trainer, stage: str) -> dict[str, float]:
        """Accuracy of every named eval set of ``stage`` (``val`` or ``test``) this epoch."""
        gm = self._group_metrics(trainer)
        out: dict[str, float] = {}
        for name, metric in zip(gm.set_names.get(stage, []), gm.metrics.get(stage, [])):
            if metric.all_total.item() == 0 and trainer.world_size == 1:
                continue
            out[name] = float(metric.compute()["acc"])  # summed over ranks by the metric
        return out

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        accs = self.accuracies(trainer, stage)
        values = {f"{stage}/{name}/acc": acc for name, acc in accs.items()}
        gap = background_gap(accs, self.same_set, self.rand_set)
        if gap is not None:
            values[f"{stage}/bg_gap"] = gap
        for key, value in values.items():
            pl_module.log(
                key,
                value,
                add_dataloader_idx=False,
                sync_dist=False,
                prog_bar=key.endswith("bg_gap"),
            )
        self.last.update(values)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")
