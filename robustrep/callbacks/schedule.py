"""When a periodic validation-time callback (probes, image grids, diagnostics) should run."""

from __future__ import annotations

import lightning.pytorch as pl


def validation_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """True at the end of every ``every_n_epochs``-th training epoch's validation; never during the
    sanity check, never when ``every_n_epochs <= 0`` (test time only)."""
    return (
        not trainer.sanity_checking
        and every_n_epochs > 0
        and (trainer.current_epoch + 1) % every_n_epochs == 0
    )
