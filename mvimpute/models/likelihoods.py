"""Per-view decoder likelihoods: bernoulli, gaussian, poisson, negative binomial."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import distributions as D

from .base import soft_floor

# Parameters the decoder head emits per feature, by likelihood.
N_PARAMS = {"bernoulli": 1, "gaussian": 2, "poisson": 1, "negative_binomial": 2}
LOGVAR_FLOOR = -9.0


def distribution(likelihood: str, raw: torch.Tensor) -> D.Distribution:
    """The per-entry distribution from the decoder's raw output (..., N_PARAMS * d)."""
    if likelihood == "bernoulli":
        return D.Bernoulli(logits=raw)
    if likelihood == "gaussian":
        mu, logvar = raw.chunk(2, dim=-1)
        return D.Normal(mu, torch.exp(0.5 * soft_floor(logvar, LOGVAR_FLOOR)))
    if likelihood == "poisson":
        return D.Poisson(F.softplus(raw) + 1e-6)
    if likelihood == "negative_binomial":
        log_mean, log_theta = raw.chunk(2, dim=-1)
        mean = torch.exp(log_mean.clamp(max=15))
        theta = torch.exp(log_theta.clamp(-10, 10))
        # NB with mean `mean` and inverse dispersion `theta`: logits = log(mean / theta)
        return D.NegativeBinomial(total_count=theta, logits=torch.log(mean + 1e-8) - torch.log(theta))
    raise ValueError(f"unknown likelihood {likelihood!r}")


def log_prob(likelihood: str, raw: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Element-wise log p(y | decoder output). Bernoulli accepts y in [0, 1] (soft labels)."""
    if likelihood == "bernoulli":
        return -F.binary_cross_entropy_with_logits(raw, y, reduction="none")
    dist = distribution(likelihood, raw)
    if likelihood in ("poisson", "negative_binomial"):
        y = y.clamp_min(0).round()
    return dist.log_prob(y)


def mean(likelihood: str, raw: torch.Tensor) -> torch.Tensor:
    return distribution(likelihood, raw).mean


def sample(likelihood: str, raw: torch.Tensor) -> torch.Tensor:
    """A draw from the likelihood; bernoulli gives its mean (the data are intensities in [0, 1])."""
    if likelihood == "bernoulli":
        return torch.sigmoid(raw)
    return distribution(likelihood, raw).sample()
