"""The KL term CIM's VIB averages over the batch, against torch.distributions, and the
reparameterised sample.
"""

from __future__ import annotations

import torch
from torch.distributions import Normal, kl_divergence

from robustrep.losses.vae import gaussian_kl, reparameterize


def test_kl_matches_closed_form_of_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(7, 5, generator=gen), torch.randn(7, 5, generator=gen)
    expected = (
        kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros(5), torch.ones(5)))
        .sum(1)
        .mean()
    )
    torch.testing.assert_close(gaussian_kl(mu, logvar).mean(), expected)
    assert gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).sum() == 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gaussian_kl(mu.bfloat16(), logvar.bfloat16()).dtype == torch.float32


def test_reparameterize_has_the_right_moments_and_gradients():
    mu = torch.full((20000, 2), 1.5, requires_grad=True)
    logvar = torch.full((20000, 2), 2 * torch.log(torch.tensor(0.5)).item(), requires_grad=True)
    z = reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 1.5) < 0.02 and abs(z.std().item() - 0.5) < 0.02
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.ones_like(mu)) and logvar.grad.abs().sum() > 0
