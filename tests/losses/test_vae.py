"""ELBO terms against closed forms and torch.distributions references."""

from __future__ import annotations

import math

import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from robustrep.losses.vae import (
    bernoulli_log_likelihood,
    gaussian_kl,
    gaussian_log_likelihood,
    reparameterize,
)


def test_gaussian_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    reference = kl_divergence(
        Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros(5, 7), torch.ones(5, 7))
    ).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), reference)
    torch.testing.assert_close(gaussian_kl(mu, logvar, per_dimension=True).sum(1), reference)


def test_gaussian_kl_is_zero_at_the_prior_and_grows_with_the_mean():
    zeros = torch.zeros(3, 4)
    torch.testing.assert_close(gaussian_kl(zeros, zeros), torch.zeros(3))
    # KL(N(m, 1) || N(0, 1)) = m^2 / 2 per dimension
    torch.testing.assert_close(
        gaussian_kl(torch.full((1, 4), 2.0), torch.zeros(1, 4)), torch.tensor([8.0])
    )


def test_gaussian_log_likelihood_matches_normal_log_prob():
    torch.manual_seed(1)
    x, mean = torch.rand(4, 2, 3, 3), torch.rand(4, 2, 3, 3)
    for std in (0.1, 1.0):
        reference = Normal(mean, std).log_prob(x).flatten(1).sum(1)
        torch.testing.assert_close(gaussian_log_likelihood(x, mean, std), reference)
    # sigma = 1/sqrt(2): -log p = squared error + constant
    d = x[0].numel()
    nll = -gaussian_log_likelihood(x, mean, 1 / math.sqrt(2))
    torch.testing.assert_close(
        nll, (x - mean).square().flatten(1).sum(1) + d * 0.5 * math.log(math.pi)
    )


def test_bernoulli_log_likelihood_matches_bernoulli_log_prob_on_binary_data():
    torch.manual_seed(2)
    logits = torch.randn(3, 1, 4, 4)
    x = (torch.rand(3, 1, 4, 4) > 0.5).float()
    reference = Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(bernoulli_log_likelihood(x, logits), reference)


def test_terms_stay_fp32_under_bf16_autocast():
    mu = torch.randn(2, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gaussian_kl(mu, mu).dtype == torch.float32
        assert (
            bernoulli_log_likelihood(
                torch.rand(2, 5), torch.randn(2, 5, dtype=torch.bfloat16)
            ).dtype
            == torch.float32
        )
        assert gaussian_log_likelihood(torch.rand(2, 5), torch.rand(2, 5)).dtype == torch.float32


def test_reparameterize_has_the_posterior_moments():
    mu, logvar = (
        torch.tensor([[1.0, -2.0]]).expand(20000, 2),
        torch.tensor([[0.0, math.log(0.25)]]).expand(20000, 2),
    )
    z = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), torch.tensor([1.0, -2.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 0.5]), atol=0.03, rtol=0)
