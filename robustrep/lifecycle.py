"""A run's lifecycle (DESIGN.md, contract 6): checkpoints as it goes, clean stops, model selection,
divergence.

- :class:`RunCheckpoint` writes ``checkpoints/last.ckpt`` atomically at the end of every training
  epoch (and every ``every_n_train_steps`` batches if set), so a kill at any moment loses at most
  the current epoch. On a stop request it saves at the end of the current training step and raises
  :class:`RunStopped`.
- :func:`stop_on_signals` turns SIGTERM and the first SIGINT (Ctrl-C) into such a stop request; a
  second Ctrl-C stops at once (the last epoch's checkpoint is kept).
- :class:`Selection` keeps the checkpoint with the best validation metric (e.g. the best
  ``val/worst_group_acc``), which the test pass then scores.
- :class:`LossWatch` records the training loss at the first step and at the end, and flags a run
  whose loss ended orders of magnitude above where it started.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import sys
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from robustrep.errors import RobustRepError

#: Exit status of a run stopped by a signal (128 + the signal's number, the shell convention).
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class RunStopped(RobustRepError):
    """The run stopped on a signal after saving ``checkpoint`` (None if no checkpoint was
    written).
    """

    def __init__(self, signum: int, checkpoint: str | None, message: str = "") -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")


class _StopRequest:
    signum: int | None = None


_STOP = _StopRequest()


def stop_requested() -> int | None:
    """The signal that asked this process to stop (SIGTERM / SIGINT), or None."""
    return _STOP.signum


def request_stop(signum: int) -> None:
    """Ask the running fit to stop at the end of its current step (what the signal handlers do)."""
    if _STOP.signum is None:
        _STOP.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGTERM and a first SIGINT request a clean stop instead of killing the process.

    The handler also forwards the request to this process's ``multiprocessing`` children (the
    workers of ``ddp_spawn``), as SIGTERM, which Lightning turns into a stop there. A second SIGINT
    raises ``KeyboardInterrupt`` at once. Outside the main thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT and _STOP.signum is not None:
            raise KeyboardInterrupt
        first = _STOP.signum is None
        request_stop(signum)
        if first:
            name = signal.Signals(signum).name
            print(
                f"\nrobustrep: {name} received; saving a checkpoint after the current step ...",
                file=sys.stderr,
                flush=True,
            )
            import multiprocessing

            for child in multiprocessing.active_children():
                with contextlib.suppress(Exception):
                    os.kill(child.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    _STOP.signum = None
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _STOP.signum = None


def _stop_agreed(trainer: pl.Trainer) -> bool:
    """True on every rank when any rank was asked to stop (our signal flag or Lightning's SIGTERM
    flag).
    """
    local = stop_requested() is not None or bool(getattr(trainer, "received_sigterm", False))
    if trainer.world_size > 1:
        return bool(trainer.strategy.reduce_boolean_decision(local, all=False))
    return local


class RunCheckpoint(Checkpoint):
    """``last.ckpt`` at the end of every training epoch, every N batches if asked, and on a stop.

    Each save is written to a temporary file and renamed over ``last.ckpt``, so the file on disk is
    always a complete checkpoint. The checkpoint holds the model, the optimisers, the loops'
    progress, the training loader's position and every callback's state, so resuming from it with
    ``--ckpt_path`` continues exactly (see :mod:`robustrep.randomness`).

    Args:
        dirpath: the folder (the CLI sets ``<run dir>/checkpoints``).
        every_n_train_steps: also save every this many training batches (0 = only at epoch ends).
            Turn it on when an epoch takes longer than you are willing to lose.
        filename: the file's name.
    """

    def __init__(
        self, dirpath: str | None = None, every_n_train_steps: int = 0, filename: str = "last.ckpt"
    ) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.dirpath = dirpath
        self.every_n_train_steps = every_n_train_steps
        self.filename = filename

    @property
    def path(self) -> Path:
        if self.dirpath is None:
            raise RobustRepError("RunCheckpoint has no dirpath")
        return Path(self.dirpath) / self.filename

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")

    def save(self, trainer: pl.Trainer) -> Path:
        """Write the checkpoint atomically (collective under DDP: every rank calls it)."""
        path = self.path
        tmp = path.with_name(f".{path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, path)
        trainer.strategy.barrier("robustrep-last-ckpt")
        return path

    def _stop(self, trainer: pl.Trainer) -> None:
        signum = stop_requested() or signal.SIGTERM
        raise RunStopped(signum, str(self.path))

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        stop = _stop_agreed(trainer)
        due = (
            self.every_n_train_steps > 0
            and (trainer.fit_loop.total_batch_idx + 1) % self.every_n_train_steps == 0
        )
        last_of_epoch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if stop or (due and not last_of_epoch):
            self.save(trainer)
        if stop:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)
        if _stop_agreed(trainer):
            self._stop(trainer)

    def _stop_evaluation(self, trainer: pl.Trainer) -> None:
        # a stop during a test/validate run (not inside fit's validation, which ends with the epoch)
        if not trainer.training and trainer.state.fn != "fit" and _stop_agreed(trainer):
            raise RunStopped(stop_requested() or signal.SIGTERM, None)

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._stop_evaluation(trainer)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._stop_evaluation(trainer)


class Selection(ModelCheckpoint):
    """Keep the checkpoint with the best ``monitor`` value (model selection on validation).

    The file is ``best-epoch<E>-step<S>.ckpt`` in ``dirpath``; ties keep the earlier epoch. Epochs
    before ``first_epoch`` are never selected (JTT's identification epochs are plain ERM).

    Args:
        dirpath: the checkpoint folder.
        monitor: a validation metric, e.g. ``val/worst_group_acc``.
        mode: ``max`` or ``min``.
        first_epoch: the first epoch that may be selected.
    """

    def __init__(self, dirpath: str, monitor: str, mode: str = "max", first_epoch: int = 0) -> None:
        super().__init__(
            dirpath=dirpath,
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=False,
            filename="best-epoch{epoch:03d}-step{step:06d}",
            auto_insert_metric_name=False,
        )
        self.first_epoch = first_epoch

    def _too_early(self, trainer: pl.Trainer) -> bool:
        return trainer.current_epoch < self.first_epoch

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._too_early(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._too_early(trainer):
            super().on_train_epoch_end(trainer, pl_module)


class LossWatch(pl.Callback):
    """The training loss at the first step and (median of the last ``window`` steps) at the end.

    A run has *diverged* when its final loss is not finite or ``|end| > factor * max(|start|, 1)``
    (default factor 100: a cross-entropy starting at 0.7 that ends above 100, a VAE loss starting
    at 500 that ends above 50,000). Read from the ``loss`` a training step returns, or from the
    logged ``train/loss`` for methods that optimise manually.
    """

    def __init__(self, factor: float = 100.0, window: int = 10) -> None:
        self.factor = factor
        self.window = window
        self.start: torch.Tensor | float | None = None
        # detached loss tensors, read as numbers only when saved or summarised (no device sync per
        # step)
        self.recent: deque[torch.Tensor | float] = deque(maxlen=window)

    def state_dict(self) -> dict[str, Any]:
        return {
            "start": None if self.start is None else float(self.start),
            "recent": [float(v) for v in self.recent],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start = state_dict.get("start")
        self.recent = deque(state_dict.get("recent", []), maxlen=self.window)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            loss = trainer.callback_metrics.get("train/loss")
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        value = loss.detach().float().reshape(())
        if self.start is None:
            self.start = value
        self.recent.append(value)

    def summary(self) -> dict[str, Any] | None:
        """``{"first_loss", "final_loss", "factor", "diverged"}`` or None if no loss was seen."""
        if self.start is None or not self.recent:
            return None
        end = statistics.median(float(v) for v in self.recent)
        diverged = not math.isfinite(end) or abs(end) > self.factor * max(
            abs(float(self.start)), 1.0
        )
        return {
            "first_loss": float(self.start),
            "final_loss": end,
            "factor": self.factor,
            "diverged": diverged,
        }
