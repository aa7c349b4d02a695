"""Variational information bottleneck (Alemi et al., 2017): the KL term and the reparameterisation."""

from __future__ import annotations

import torch


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` summed over dimensions, averaged over the batch.

    Closed form ``0.5 * sum(mu^2 + exp(logvar) - logvar - 1)``; computed in fp32 with autocast off.
    """
    with torch.autocast(device_type=mu.device.type, enabled=False):
        mu, logvar = mu.float(), logvar.float()
        return 0.5 * (mu.square() + logvar.exp() - logvar - 1.0).sum(1).mean()


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A sample ``mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)`` (differentiable in mu, logvar)."""
    eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
    return mu + (0.5 * logvar).exp() * eps
