"""Framework overhead: robustrep (Lightning Trainer + ERM) vs a hand-written PyTorch loop.

Both train the same model (ERM's CNN + linear head) on the same in-memory synthetic data with the
same batch size and optimiser; runs alternate (robustrep, plain, robustrep, ...) so drift on a noisy
machine hits both. Only the training loop is timed (no validation). The last line is the ratio of
steps per second, robustrep / plain (1.0 = no overhead).

    python benchmarks/overhead.py [--rounds 3] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("WANDB_MODE", "disabled")
warnings.filterwarnings("ignore")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from robustrep.data import SyntheticSpurious  # noqa: E402
from robustrep.methods import ERM  # noqa: E402


class Timer(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def make_model(dm: SyntheticSpurious) -> ERM:
    torch.manual_seed(0)
    return ERM(
        backbone="cnn",
        backbone_kwargs={"width": 16},
        num_classes=dm.num_classes,
        num_groups=dm.num_groups,
        image_shape=dm.image_shape,
    )


def run_robustrep(dm: SyntheticSpurious, epochs: int) -> float:
    model, timer = make_model(dm), Timer()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=dm)
    return trainer.global_step / timer.seconds


def run_plain(dm: SyntheticSpurious, epochs: int) -> float:
    model = make_model(dm)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(
        dm.train_dataset(), batch_size=dm.batch_size, shuffle=True, num_workers=dm.num_workers
    )
    model.train()
    steps, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--epochs",
        type=int,
        default=4,
        help="epochs per run; fewer lets fixed start-up costs dominate",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for both (1 = least noisy)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dm = SyntheticSpurious(size=16, train_size=4000, batch_size=64)
    dm.setup("fit")
    ours, plain = [], []
    for r in range(args.rounds):
        ours.append(run_robustrep(dm, args.epochs))
        plain.append(run_plain(dm, args.epochs))
        print(
            f"round {r + 1}: robustrep {ours[-1]:.1f} steps/s, plain "
            f"PyTorch {plain[-1]:.1f} steps/s"
        )
    ratio = statistics.median(ours) / statistics.median(plain)
    print(
        f"robustrep / plain PyTorch throughput ratio (median of {args.rounds} "
        f"alternating rounds): {ratio:.3f}"
    )


if __name__ == "__main__":
    main()
