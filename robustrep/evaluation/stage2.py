"""Chroma-VAE's stage 2: a classifier fitted on frozen features (kNN, logistic, MLP, or an image
classifier on decoded partial reconstructions), with a picklable state for checkpoints."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from robustrep.backbones import build_backbone
from robustrep.errors import ConfigError
from robustrep.evaluation.knn import euclidean_knn_votes


class Stage2:
    """The z2-classifier: ``fit(features, labels)``, ``scores(features)``, a picklable ``state``."""

    def __init__(self, kind: str, num_classes: int, **options: Any) -> None:
        self.kind, self.num_classes, self.options = kind, num_classes, options
        self.state: dict[str, Any] = {}
        self.net: nn.Module | None = None

    # kNN: the state is the bank itself.
    def fit(self, features: torch.Tensor, labels: torch.Tensor, decode=None) -> None:
        opts = self.options
        if self.kind == "knn":
            k = opts.get("k") or max(1, round(math.sqrt(features.shape[0])))
            self.state = {"bank": features.float(), "labels": labels.long(), "k": int(k)}
            return
        gen = torch.Generator(device="cpu").manual_seed(opts.get("seed", 0))
        mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
        self.state = {"mean": mean, "std": std}
        self.net = self._build(features.shape[1]).to(features.device)
        optimizer = torch.optim.Adam(
            self.net.parameters(), lr=opts.get("lr", 1e-2 if self.kind != "x2" else 1e-3)
        )
        steps, batch = (
            opts.get("steps", 500),
            opts.get("batch_size", 1024 if self.kind != "x2" else 128),
        )
        self.net.train()
        for _ in range(steps):
            idx = torch.randint(
                features.shape[0], (min(batch, features.shape[0]),), generator=gen
            ).to(features.device)
            inputs = self._inputs(features[idx], decode, gen)
            loss = F.cross_entropy(self.net(inputs).float(), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.net.eval()
        self.state["net"] = {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def _build(self, dim: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the training RNG
            torch.manual_seed(self.options.get("seed", 0))
            return self._build_seeded(dim)

    def _build_seeded(self, dim: int) -> nn.Module:
        hidden = self.options.get("hidden", 128)
        if self.kind == "logistic":
            return nn.Linear(dim, self.num_classes)
        if self.kind == "mlp":
            return nn.Sequential(
                nn.Linear(dim, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, self.num_classes),
            )
        if self.kind == "x2":
            image_shape = self.options["image_shape"]
            trunk = build_backbone("cnn", image_shape, width=16, blocks=3)
            return nn.Sequential(trunk, nn.Linear(trunk.out_dim, self.num_classes))
        raise ConfigError(f"unknown stage2 {self.kind!r}; choose knn, logistic, mlp or x2")

    def _inputs(self, feats: torch.Tensor, decode, gen: torch.Generator | None) -> torch.Tensor:
        if self.kind == "x2":
            with torch.no_grad():
                return decode(feats, gen)
        return (feats - self.state["mean"].to(feats.device)) / self.state["std"].to(feats.device)

    @property
    def fitted(self) -> bool:
        return bool(self.state)

    @torch.no_grad()
    def scores(self, features: torch.Tensor, decode=None) -> torch.Tensor:
        """Class scores (kNN: vote fractions; otherwise softmax probabilities), N x C."""
        if self.kind == "knn":
            s = self.state
            return euclidean_knn_votes(
                s["bank"].to(features.device), s["labels"], features, s["k"], self.num_classes
            )
        if self.net is None:
            self.net = self._build(features.shape[1])
            self.net.load_state_dict(self.state["net"])
            self.net.eval()
        self.net.to(features.device)
        gen = torch.Generator(device="cpu").manual_seed(self.options.get("seed", 0))
        return self.net(self._inputs(features.float(), decode, gen)).float().softmax(1)

    def load_state(self, state: dict[str, Any]) -> None:
        self.state, self.net = dict(state), None
