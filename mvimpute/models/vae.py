"""MVAE and MIWAE: the TAE paper's baselines, with the same posterior q(z|y,m) p(x|z).

MVAE maximises E_q(z|y) log p(y_obs|z) − KL(q(z|y) ‖ N(0, I)); MIWAE (Mattei & Frellsen 2019)
maximises log (1/K) Σ_k p(y_obs|z_k) p(z_k) / q(z_k|y). p(y_obs|z) is the Gaussian p(x|z)
restricted to observed entries and observed through each view's likelihood (a censored Gaussian
for `bounded` views, probit for `binary`). `loss` is minus the bound averaged over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..batch import MultiViewBatch
from .base import LossOutput, ViewInfo, gaussian_log_prob, register_model
from .posterior import (
    PosteriorModel,
    PosteriorNetworks,
    kl_standard_normal,
    reparameterise,
    seeded_normal,
    standard_normal_log_prob,
)

ROW_CHUNK_ELEMENTS = 2**24  # bound on K·n·D per imputation chunk


@dataclass
class _PosteriorConfig:
    latent_dim: int = 20
    hidden: int = 400
    latent_logvar_cap: float | None = None
    logvar_floor: float = -9.0
    denoise: bool = False

    def __post_init__(self) -> None:
        for name in ("latent_dim", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class MVAEConfig(_PosteriorConfig):
    """`analytic_kl=False` estimates the KL from the draw (log q(z|y) − log p(z))."""

    analytic_kl: bool = True


@dataclass
class MIWAEConfig(_PosteriorConfig):
    """K importance samples in training; `impute_samples` importance draws when imputing."""

    K: int = 20
    impute_samples: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.K < 1 or self.impute_samples < 1:
            raise ValueError(f"K and impute_samples must be >= 1, got {self.K}, {self.impute_samples}")


def _draw_z(mu: torch.Tensor, logvar: torch.Tensor, k: int, eps: torch.Tensor | None) -> torch.Tensor:
    if eps is None:
        eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
    return reparameterise(mu, logvar, eps)


def log_importance_weights(
    model: PosteriorModel, batch: MultiViewBatch, k: int, eps: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(y_obs|z_k) + log p(z_k) − log q(z_k|y) (K, n), with μ_x and log σ²_x (K, n, D)."""
    mu_z, lv_z = model.posterior_z(batch)
    z = _draw_z(mu_z, lv_z, k, eps)
    mu_x, lv_x = model.posterior_x_given_z(z, batch)
    log_lik = model.posterior.observed_log_lik(mu_x, lv_x, batch)
    log_q = gaussian_log_prob(z, mu_z, lv_z).sum(-1)
    return log_lik + standard_normal_log_prob(z) - log_q, mu_x, lv_x


def mvae_bound(
    model: PosteriorModel,
    batch: MultiViewBatch,
    eps: torch.Tensor | None = None,
    analytic_kl: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample ELBO (n,) from one draw, with its log-likelihood and KL parts."""
    mu_z, lv_z = model.posterior_z(batch)
    z = reparameterise(mu_z, lv_z, eps)
    mu_x, lv_x = model.posterior_x_given_z(z, batch)
    log_lik = model.posterior.observed_log_lik(mu_x, lv_x, batch)
    if analytic_kl:
        kl = kl_standard_normal(mu_z, lv_z)
    else:
        kl = gaussian_log_prob(z, mu_z, lv_z).sum(-1) - standard_normal_log_prob(z)
    return log_lik - kl, log_lik, kl


def miwae_bound(model: PosteriorModel, batch: MultiViewBatch, k: int, eps: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample importance-weighted bound (n,): logsumexp_k log w_k − log K. eps: (K, n, J)."""
    log_w = log_importance_weights(model, batch, k, eps)[0]
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


class _VAEBase(PosteriorModel):
    def __init__(self, views: list[ViewInfo], config) -> None:
        super().__init__(views, config)
        c = self.config
        self.posterior = PosteriorNetworks(
            self.view_infos, c.latent_dim, c.hidden, False, c.logvar_floor, c.latent_logvar_cap
        )


@register_model("mvae")
class MVAE(_VAEBase):
    """VAE for data recovery: encoder q(z|y,m), decoder p(x|z), prior N(0, I)."""

    config_class = MVAEConfig

    def __init__(self, views: list[ViewInfo], config: MVAEConfig | None = None) -> None:
        super().__init__(views, config or MVAEConfig())

    def loss(self, batch: MultiViewBatch, progress: float = 1.0) -> LossOutput:
        bound, log_lik, kl = mvae_bound(self, batch, analytic_kl=self.config.analytic_kl)
        elbo = bound.mean()
        return LossOutput(
            -elbo,
            {"elbo": elbo.detach(), "log_lik": log_lik.detach().mean(), "kl": kl.detach().mean()},
        )


@register_model("miwae")
class MIWAE(_VAEBase):
    """Importance-weighted VAE; imputes by self-normalised importance weights over draws of z."""

    config_class = MIWAEConfig

    def __init__(self, views: list[ViewInfo], config: MIWAEConfig | None = None) -> None:
        super().__init__(views, config or MIWAEConfig())

    def loss(self, batch: MultiViewBatch, progress: float = 1.0) -> LossOutput:
        bound = miwae_bound(self, batch, self.config.K).mean()
        return LossOutput(-bound, {"miwae_bound": bound.detach()})

    def _chunks(self, batch: MultiViewBatch) -> list[MultiViewBatch]:
        k, d = self.config.impute_samples, self.posterior.data_dim
        size = max(1, ROW_CHUNK_ELEMENTS // (k * d))
        return [batch.select(slice(i, i + size)) for i in range(0, len(batch), size)]

    def _weighted(self, batch: MultiViewBatch, seeded: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-normalised weights (K, n) and μ_x, log σ²_x (K, n, D) of K draws z_k ~ q(z|y)."""
        k = self.config.impute_samples
        eps = None
        if seeded:
            ref = batch.values[self.view_names[0]]
            eps = seeded_normal((k, len(batch), self.posterior.latent_dim), ref)
        log_w, mu_x, lv_x = log_importance_weights(self, batch, k, eps)
        return torch.softmax(log_w, dim=0), mu_x, lv_x

    @torch.no_grad()
    def impute(self, batch: MultiViewBatch, n_samples: int, censored: bool = True) -> dict[str, torch.Tensor]:
        """Sampling importance resampling: pick z_k with weight w_k, then x ~ p(x|z_k)."""
        parts = []
        for sub in self._chunks(batch):
            w, mu_x, lv_x = self._weighted(sub)
            idx = torch.multinomial(w.T, n_samples, replacement=True).T  # (S, n)
            rows = torch.arange(w.shape[1], device=w.device).expand_as(idx)
            parts.append(self.posterior.observe(reparameterise(mu_x[idx, rows], lv_x[idx, rows]), censored))
        return self._finish(batch, torch.cat(parts, dim=1))

    @torch.no_grad()
    def impute_mean(self, batch: MultiViewBatch) -> dict[str, torch.Tensor]:
        """Σ_k w_k E[y | z_k] (the observation's mean under p(x|z_k)), from seeded draws (deterministic)."""
        parts = []
        for sub in self._chunks(batch):
            w, mu_x, lv_x = self._weighted(sub, seeded=True)
            parts.append((w.unsqueeze(-1) * self.posterior.observation_mean(mu_x, lv_x)).sum(0))
        return self._finish(batch, torch.cat(parts, dim=0))
