"""ELBO terms of a VAE with a diagonal Gaussian posterior and a standard normal prior (Chroma-VAE),
and of the variational information bottleneck (CIM's VIB: the same KL and sample).

Every function returns one value per example (summed over the latent dimensions or the pixels) and
computes in fp32 with autocast switched off, so ``exp``/``log`` stay exact under ``bf16-mixed``.
The negative ELBO of a batch is ``-log_likelihood + beta * gaussian_kl`` (Chroma-VAE, METHODS.md
§2).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

LOG_2PI = math.log(2.0 * math.pi)


def _fp32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


def gaussian_kl(
    mu: torch.Tensor, logvar: torch.Tensor, per_dimension: bool = False
) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` in closed form.

    Args:
        mu, logvar: posterior means and log-variances, N x D.
        per_dimension: return the N x D terms instead of their sum over D.

    Returns:
        N (or N x D) tensor, fp32: ``0.5 * (mu^2 + exp(logvar) - 1 - logvar)`` summed over D.
    """
    with torch.autocast(device_type=mu.device.type, enabled=False):
        mu, logvar = _fp32(mu, logvar)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)
        return kl if per_dimension else kl.sum(dim=1)


def gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, std: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """``log N(x | mean, std^2 I)`` summed over every non-batch dimension.

    Args:
        x: targets, N x ... (e.g. images N x C x H x W).
        mean: decoder means, same shape as ``x``.
        std: the observation noise, a float or a tensor broadcastable to ``x`` (e.g. a learned
            per-channel scale). ``std = 1/sqrt(2)`` makes ``-log p`` equal the summed squared error
            up to a constant.

    Returns:
        N tensor, fp32.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, mean = _fp32(x, mean)
        std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device)
        per_pixel = -0.5 * ((x - mean) / std_t).square() - torch.log(std_t) - 0.5 * LOG_2PI
        return per_pixel.expand_as(x).flatten(1).sum(dim=1)


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``sum_i [x_i log p_i + (1 - x_i) log(1 - p_i)]`` with ``p = sigmoid(logits)``.

    ``x`` may hold grey levels in [0, 1] (the usual relaxation for MNIST-like images); the value is
    then a cross-entropy, not a normalised log-density.

    Args:
        x: targets in [0, 1], N x ...
        logits: decoder logits, same shape.

    Returns:
        N tensor, fp32.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, logits = _fp32(x, logits)
        return (
            -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(dim=1)
        )


def reconstruction_nll(
    x: torch.Tensor, out: torch.Tensor, likelihood: str = "bernoulli", std: float = 0.1
) -> torch.Tensor:
    """``-log p(x|z)`` per example from the decoder output ``out``: logits (``bernoulli``) or means
    (``gaussian``, observation noise ``std``)."""
    if likelihood == "bernoulli":
        return -bernoulli_log_likelihood(x, out)
    return -gaussian_log_likelihood(x, out, std)


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A sample ``mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)`` (fp32)."""
    with torch.autocast(device_type=mu.device.type, enabled=False):
        mu, logvar = _fp32(mu, logvar)
        eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
        return mu + torch.exp(0.5 * logvar) * eps


__all__ = [
    "bernoulli_log_likelihood",
    "gaussian_kl",
    "gaussian_log_likelihood",
    "reconstruction_nll",
    "reparameterize",
]
