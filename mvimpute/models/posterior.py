"""The recovery posterior q(x|y) = ∫ q(z|y,m) q(x|z[,y,m]) dz shared by TAE, MVAE and MIWAE.

All three models train the *same* structure (TAE paper, App. C.1), so the difference between
them is the inference method alone. Views are concatenated into one vector x with a Gaussian
q(x|z) (views arrive scaled: standardised, or raw for bounded, binary and count views); each
view's likelihood is the observation of that Gaussian (`likelihoods.link_*`): `bounded` views
censor it to [0, 1], `binary` views threshold it at ½ (probit), counts round it. Draws are of
the observation (a censored value, a bit, a count), the point imputation its mean.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import likelihoods as lk
from ..batch import MultiViewBatch
from .base import ImputationModel, ViewInfo, mlp, soft_cap, soft_floor


def leaky_mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """Two hidden layers, leaky ReLU (the TAE paper's architecture)."""
    return mlp(d_in, (hidden, hidden), d_out, act=nn.LeakyReLU)


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """μ + σ·ε; `eps` may carry extra leading sample dimensions."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + torch.exp(0.5 * logvar) * eps


def seeded_normal(shape: tuple[int, ...], like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """N(0, I) noise from a fixed seed, on `like`'s device: reproducible point imputations."""
    gen = torch.Generator(device=like.device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=like.device, dtype=like.dtype)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) summed over the last dimension."""
    return 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar).sum(-1)


def kl_gaussians(
    mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(μ_q, diag σ_q²) ‖ N(μ_p, diag σ_p²)) summed over the last dimension."""
    return 0.5 * (logvar_p - logvar_q + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) * torch.exp(-logvar_p) - 1.0).sum(-1)


class PosteriorNetworks(nn.Module):
    """q(z|y,m) with input `[y, m]` and q(x|z) (or q(x|z,y,m) when `conditions_on_y`, or q(x|z,m)
    when `conditions_on_mask`: the mask alone lets q(x|z) widen missing entries without copying y).

    `latent_logvar_cap` smoothly caps log σ²_z of q(z|y,m) (None: no cap); all log-variances
    are floored softly at `logvar_floor`.
    """

    def __init__(
        self,
        views: list[ViewInfo],
        latent_dim: int,
        hidden: int,
        conditions_on_y: bool = False,
        logvar_floor: float = -9.0,
        latent_logvar_cap: float | None = None,
        conditions_on_mask: bool = False,
    ) -> None:
        super().__init__()
        self.likelihoods = [v.likelihood for v in views]
        self.conditions_on_mask = conditions_on_mask and not conditions_on_y
        self.view_names = [v.name for v in views]
        self.dims = [v.dim for v in views]
        self.data_dim = sum(self.dims)
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.conditions_on_y = conditions_on_y
        self.logvar_floor = logvar_floor
        self.latent_logvar_cap = latent_logvar_cap
        d = self.data_dim
        # (D,) the view number of each concatenated feature
        self.register_buffer(
            "feature_view",
            torch.repeat_interleave(torch.arange(len(self.dims)), torch.tensor(self.dims)),
            persistent=False,
        )
        self.encoder = leaky_mlp(2 * d, hidden, 2 * latent_dim)
        extra = 2 * d if conditions_on_y else d if self.conditions_on_mask else 0
        self.decoder = leaky_mlp(latent_dim + extra, hidden, 2 * d)

    # -- views ↔ one vector
    def observed(self, batch: MultiViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated (y with missing → 0, m), each (n, D)."""
        y = torch.cat([batch.values[v] for v in self.view_names], dim=-1)
        m = torch.cat([batch.masks[v] for v in self.view_names], dim=-1)
        return y, m

    def split(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., D) → dict view → (..., d_v)."""
        return dict(zip(self.view_names, x.split(self.dims, dim=-1), strict=True))

    def condition(self, batch: MultiViewBatch) -> torch.Tensor:
        """`[y, m]` (n, 2D): the input every conditional network sees."""
        return torch.cat(self.observed(batch), dim=-1)

    # -- the two conditionals
    def posterior_z(self, batch: MultiViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|y,m): (μ_z, log σ²_z), each (n, J)."""
        mu, raw = self.encoder(self.condition(batch)).chunk(2, dim=-1)
        if self.latent_logvar_cap is not None:
            raw = soft_cap(raw, self.latent_logvar_cap)
        return mu, soft_floor(raw, self.logvar_floor)

    def posterior_x_given_z(self, z: torch.Tensor, batch: MultiViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x|z[,y,m]): (μ_x, log σ²_x), each (..., n, D) for z of shape (..., n, J)."""
        h = z
        if self.conditions_on_y or self.conditions_on_mask:
            c = self.condition(batch) if self.conditions_on_y else self.observed(batch)[1]
            h = torch.cat([z, c.expand(*z.shape[:-1], c.shape[-1])], dim=-1)
        mu, raw = self.decoder(h).chunk(2, dim=-1)
        return mu, soft_floor(raw, self.logvar_floor)

    def per_view(self, fn, *tensors: torch.Tensor) -> torch.Tensor:
        """Apply `fn(likelihood, *view_slices)` view by view along the last dimension and concatenate."""
        parts = [t.split(self.dims, dim=-1) for t in tensors]
        return torch.cat([fn(lik, *(p[i] for p in parts)) for i, lik in enumerate(self.likelihoods)], dim=-1)

    def observe(self, x: torch.Tensor, censored: bool = True) -> torch.Tensor:
        """The views' observations of Gaussian draws x (..., D): censored, thresholded or rounded
        (`censored=False`: `bounded` views' x left unclamped)."""
        return self.per_view(lambda lik, part: lk.link_sample(lik, part, censored), x)

    def observation_mean(self, mu_x: torch.Tensor, logvar_x: torch.Tensor) -> torch.Tensor:
        return self.per_view(lk.link_mean, mu_x, logvar_x)

    def sample_x(
        self, batch: MultiViewBatch, n_samples: int, extra_logvar: torch.Tensor | None = None, censored: bool = True
    ) -> torch.Tensor:
        """Predictive draws: z ~ q(z|y,m), x ~ q(x|z[,y,m]) (+ noise of log-variance `extra_logvar`),
        observed through each view's likelihood: (S, n, D)."""
        mu_z, lv_z = self.posterior_z(batch)
        z = reparameterise(mu_z, lv_z, torch.randn(n_samples, *mu_z.shape, device=mu_z.device, dtype=mu_z.dtype))
        mu_x, lv_x = self.posterior_x_given_z(z, batch)
        if extra_logvar is not None:
            lv_x = torch.logaddexp(lv_x, extra_logvar)
        return self.observe(reparameterise(mu_x, lv_x), censored)

    def mean_x(self, batch: MultiViewBatch, n_z: int = 32, extra_logvar: torch.Tensor | None = None) -> torch.Tensor:
        """The predictive mean E[y|y_obs] over `n_z` seeded draws of z (deterministic): (n, D)."""
        mu_z, lv_z = self.posterior_z(batch)
        z = reparameterise(mu_z, lv_z, seeded_normal((n_z, *mu_z.shape), mu_z))
        mu_x, lv_x = self.posterior_x_given_z(z, batch)
        if extra_logvar is not None:
            lv_x = torch.logaddexp(lv_x, extra_logvar)
        return self.observation_mean(mu_x, lv_x).mean(0)

    def observed_log_lik(self, mu_x: torch.Tensor, logvar_x: torch.Tensor, batch: MultiViewBatch) -> torch.Tensor:
        """log p(y_obs|z): q(x|z) observed through each view's likelihood on observed entries, summed: (..., n)."""
        y, m = self.observed(batch)
        return (self.link_log_prob(y, mu_x, logvar_x) * m).sum(-1)

    def link_log_prob(self, y: torch.Tensor, mu_x: torch.Tensor, logvar_x: torch.Tensor) -> torch.Tensor:
        """Element-wise log p(y | x ~ N(μ_x, σ²_x)) under each view's observation: (..., n, D)."""
        y = y.expand(mu_x.shape)
        return self.per_view(lk.link_log_prob, y, mu_x, logvar_x)


class PosteriorModel(ImputationModel):
    """A model whose recovery posterior is `self.posterior` (a `PosteriorNetworks`).

    Exposes `posterior_z` / `posterior_x_given_z` (used by `eval_elbo.evaluation_elbo`) and
    imputes by drawing z ~ q(z|y,m), x ~ q(x|z): observed entries keep y unless
    `config.denoise`.
    """

    posterior: PosteriorNetworks

    def posterior_z(self, batch: MultiViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.posterior.posterior_z(batch)

    def posterior_x_given_z(self, z: torch.Tensor, batch: MultiViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.posterior.posterior_x_given_z(z, batch)

    def _finish(self, batch: MultiViewBatch, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.posterior.split(x)
        return out if getattr(self.config, "denoise", False) else self.keep_observed(batch, out)

    def predictive_logvar(self, batch: MultiViewBatch) -> torch.Tensor | None:
        """Log-variance (n, D) of observation noise added to q(x|z)'s draws (None: none)."""
        return None

    @torch.no_grad()
    def impute(self, batch: MultiViewBatch, n_samples: int, censored: bool = True) -> dict[str, torch.Tensor]:
        return self._finish(batch, self.posterior.sample_x(batch, n_samples, self.predictive_logvar(batch), censored))

    @torch.no_grad()
    def impute_mean(self, batch: MultiViewBatch) -> dict[str, torch.Tensor]:
        return self._finish(batch, self.posterior.mean_x(batch, extra_logvar=self.predictive_logvar(batch)))
