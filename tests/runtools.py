"""Callbacks the run-record tests put into real runs (``--trainer.callbacks``); importable by
subprocesses started with ``PYTHONPATH=tests``."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import lightning.pytorch as pl


class SignalAt(pl.Callback):
    """Send ``signum`` to this very process at the end of training batch ``batch`` of epoch
    ``epoch`` (a real signal at a known point: SIGTERM / SIGINT are handled, SIGKILL is a crash).
    With ``once_file`` it fires only if that file does not exist yet (and creates it), so the
    resumed run, which passes the same point again after a crash, is not stopped a second time."""

    def __init__(
        self, epoch: int, batch: int, signum: str = "SIGTERM", once_file: str | None = None
    ) -> None:
        self.epoch = epoch
        self.batch = batch
        self.signum = signum
        self.once_file = once_file

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            if self.once_file is not None:
                if Path(self.once_file).exists():
                    return
                Path(self.once_file).touch()
            os.kill(os.getpid(), getattr(signal, self.signum))


def weights_digest(module) -> str:
    """SHA-256 of every tensor of a module's state dict (names included)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class WeightsLog(pl.Callback):
    """Write to ``path`` the monitored validation metric and the weights' digest after each epoch's
    validation, and the digest of the weights each test pass scores."""

    def __init__(self, path: str, monitor: str = "val/worst_group_acc") -> None:
        self.path = path
        self.monitor = monitor
        self.record: dict[str, list] = {"val": [], "test": []}

    def _write(self) -> None:
        Path(self.path).write_text(json.dumps(self.record))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self.monitor in trainer.callback_metrics:
            self.record["val"].append(
                [
                    trainer.current_epoch,
                    float(trainer.callback_metrics[self.monitor]),
                    weights_digest(pl_module),
                ]
            )
            self._write()

    def on_test_start(self, trainer, pl_module) -> None:
        self.record["test"].append(weights_digest(pl_module))
        self._write()


class WaitAt(pl.Callback):
    """Hold the run at the end of training batch ``batch`` of epoch ``epoch`` until the file
    ``release`` exists or the run is asked to stop (SIGTERM / SIGINT), touching
    ``<run dir>/at_gate_e<epoch>`` when it gets there: a real run at a known point while a test
    signals it. Waiting changes no number of the run."""

    def __init__(self, epoch: int, batch: int, release: str) -> None:
        self.epoch = epoch
        self.batch = batch
        self.release = release

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        import time

        from robustrep.lifecycle import stop_requested

        if trainer.current_epoch != self.epoch or batch_idx != self.batch:
            return
        Path(trainer.default_root_dir, f"at_gate_e{self.epoch}").touch()
        while not Path(self.release).exists() and stop_requested() is None:
            time.sleep(0.05)
