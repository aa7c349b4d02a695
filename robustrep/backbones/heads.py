"""Heads on a representation: the projection and prediction heads of the self-supervised methods
(SimCLR, SimSiam; IP-IRM's) and small classifiers."""

from __future__ import annotations

from torch import nn


def projection_head(in_dim: int, hidden: int, out_dim: int, simsiam: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU-Linear (SimCLR); with ``simsiam`` the output layer has no bias and is followed
    by a BatchNorm without affine parameters, as in SimSiam."""
    layers: list[nn.Module] = [
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
    ]
    if simsiam:
        layers += [nn.Linear(hidden, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False)]
    else:
        layers.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*layers)


def classifier_head(in_dim: int, hidden: int, num_classes: int) -> nn.Module:
    """A linear classifier (``hidden = 0``) or an MLP with one ReLU hidden layer of ``hidden``."""
    if hidden == 0:
        return nn.Linear(in_dim, num_classes)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def predictor_head(dim: int, hidden: int) -> nn.Sequential:
    """SimSiam's predictor: Linear-BN-ReLU-Linear, ``dim -> hidden -> dim``."""
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, dim),
    )
