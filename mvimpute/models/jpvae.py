"""JPVAE: one VAE per view, coupled only through a joint Gaussian prior N(0, Σ_C).

Orme et al. 2024. Σ_C has identity diagonal blocks and cross blocks C_vw; keeping it a valid
covariance is the prior variant (`independent`, `svd`, `orthogonal` for two views, `cholesky`
for any number). A missing view is imputed from the conditional Gaussian of its latent given
the latents of the observed views, then decoded.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..batch import MultiViewBatch
from . import likelihoods as lk
from .base import ImputationModel, LossOutput, ViewInfo, encoder_input, mlp, register_model

PRIORS = ("auto", "independent", "svd", "orthogonal", "cholesky")
# tanh saturates to exactly 1 in floating point (ρ ≳ 18 in float32), which makes Σ singular:
# singular values are scaled by this bound so that I − CᵀC stays invertible.
SVD_MAX = 1.0 - 1e-3
CONDITIONALS = ("empirical", "prior")


@dataclass
class JPVAEConfig:
    # 32 latents per view and α = 0.99 (the paper: 20 and 0.95). On digits-halves with one half of
    # each test row hidden the point imputation went from 0.766 to 0.729 × the column mean's RMSE,
    # grid A from 0.221 to 0.208, CRPS down 5-6 %, coverage kept; on two-view synthetic-omics both
    # whole views and single entries improved (docs/jpvae.md, "Still short of 0.72"). α acts only on
    # two views (the orthogonal prior); below 1,000 samples the small-data rule sets the latent size.
    latent_dim: int = 32
    hidden: tuple[int, ...] = (512, 512)
    prior: str = "auto"  # "orthogonal" for two views, "cholesky" for more
    alpha: float = 0.99
    conditional: str = "empirical"
    kl_cycles: int = 4
    kl_weight: float = 1.0
    sample_noise: bool = True
    sign_seed: int = 0
    # Σ̂'s cross-view blocks × (1 − λ): a number λ in [0, 1], or "auto" (estimated; see after_fit).
    # 0 by default; the small-data rule (models/defaults.py) sets "auto" below 1,000 samples.
    cross_shrinkage: float | str = 0.0
    # weight of the cross-view reconstruction term (not in the paper; 0: the paper's objective). w = 1 takes
    # digits' whole missing views from 0.208 to 0.201 (KNN 0.210) but entries missing at random 6-9 % worse
    # (docs/jpvae.md, "For rows that lose whole views")
    cross_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.prior not in PRIORS:
            raise ValueError(f"unknown prior {self.prior!r}; choose one of {PRIORS}")
        if self.conditional not in CONDITIONALS:
            raise ValueError(f"unknown conditional {self.conditional!r}; choose one of {CONDITIONALS}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {self.latent_dim}")
        if self.kl_cycles < 0:
            raise ValueError(f"kl_cycles must be ≥ 0, got {self.kl_cycles}")
        if not 0 <= self.cross_weight < math.inf:
            raise ValueError(f"cross_weight must be a number ≥ 0, got {self.cross_weight}")
        if self.cross_shrinkage != "auto":
            bad = ValueError(f"cross_shrinkage must be 'auto' or lie in [0, 1], got {self.cross_shrinkage!r}")
            try:
                self.cross_shrinkage = float(self.cross_shrinkage)
            except (TypeError, ValueError):
                raise bad from None
            if not 0 <= self.cross_shrinkage <= 1:
                raise bad
        self.hidden = tuple(int(h) for h in self.hidden)


# ----------------------------------------------------------------------------- maths


def cayley(raw: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """O = J (I + A)(I − A)⁻¹ with A skew-symmetric from the strict upper triangle of `raw`.

    (I + A) and (I − A)⁻¹ commute, so O = J (I − A)⁻¹ (I + A), one linear solve. J = diag(signs)
    makes the whole orthogonal group reachable, not only rotations without eigenvalue −1.
    """
    upper = torch.triu(raw, diagonal=1)
    a = upper - upper.T
    eye = torch.eye(raw.shape[0], dtype=raw.dtype, device=raw.device)
    return signs[:, None] * torch.linalg.solve(eye - a, eye + a)


def cyclical_kl_weight(progress: float, cycles: int) -> float:
    """Fu et al. 2019: in each of `cycles` cycles, rise linearly 0 → 1 over the first half, then 1."""
    if cycles <= 0:
        return 1.0
    phase = (min(max(progress, 0.0), 1.0) * cycles) % 1.0
    if progress >= 1.0:
        phase = 1.0
    return min(1.0, 2.0 * phase)


def diag_normal_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)), summed over the last dimension."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def gaussian_kl_full(mu: torch.Tensor, logvar: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, Σ)) per row, by Cholesky solves (no explicit inverse of Σ)."""
    chol = torch.linalg.cholesky(cov)
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)
    precision_diag = chol_inv.pow(2).sum(0)
    trace = (precision_diag * logvar.exp()).sum(-1)
    white = torch.linalg.solve_triangular(chol, mu.T, upper=False)
    maha = white.pow(2).sum(0)
    logdet = 2.0 * torch.log(torch.diagonal(chol)).sum()
    return 0.5 * (trace + maha - mu.shape[-1] + logdet - logvar.sum(-1))


def joint_prior_kl(
    mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor, cross: torch.Tensor
) -> torch.Tensor:
    """Two-view KL(q(z1|x1) q(z2|x2) ‖ N(0, [[I, Cᵀ], [C, I]])) of MODELS.md §2, C = `cross` (n2 × n1).

    D1 = (I − CᵀC)⁻¹, D2 = (I − CCᵀ)⁻¹ by linear solves.
    """
    n1, n2 = mu1.shape[-1], mu2.shape[-1]
    eye1 = torch.eye(n1, dtype=mu1.dtype, device=mu1.device)
    eye2 = torch.eye(n2, dtype=mu1.dtype, device=mu1.device)
    d1 = torch.linalg.solve(eye1 - cross.T @ cross, eye1)
    d2 = torch.linalg.solve(eye2 - cross @ cross.T, eye2)
    s1, s2 = logvar1.exp(), logvar2.exp()
    term1 = ((mu1 @ d1) * mu1).sum(-1) - logvar1.sum(-1) - n1 + (torch.diagonal(d1) * s1).sum(-1)
    term2 = ((mu2 @ d2) * mu2).sum(-1) - logvar2.sum(-1) - n2 + (torch.diagonal(d2) * s2).sum(-1)
    logdet_d1 = torch.linalg.slogdet(d1)[1]
    cross_term = ((mu1 @ d1 @ cross.T) * mu2).sum(-1) + ((mu2 @ d2 @ cross) * mu1).sum(-1)
    return 0.5 * term1 + 0.5 * term2 - 0.5 * (logdet_d1 + cross_term)


def orthogonal_prior_kl(
    mu1: torch.Tensor,
    logvar1: torch.Tensor,
    mu2: torch.Tensor,
    logvar2: torch.Tensor,
    cross: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """Closed form of `joint_prior_kl` when C = α·O with O orthogonal (paper App. A.2): D = I/(1 − α²)."""
    n = mu1.shape[-1]
    g = 1.0 / (1.0 - alpha**2)
    term1 = g * mu1.pow(2).sum(-1) - logvar1.sum(-1) - n + g * logvar1.exp().sum(-1)
    term2 = g * mu2.pow(2).sum(-1) - logvar2.sum(-1) - n + g * logvar2.exp().sum(-1)
    return 0.5 * term1 + 0.5 * term2 - 0.5 * (n * math.log(g) + 2.0 * g * ((mu1 @ cross.T) * mu2).sum(-1))


def gaussian_conditional(
    mean: torch.Tensor, cov: torch.Tensor, obs: list[int], miss: list[int], a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """z_M | z_O = a ~ N(μ_M + Σ_MO Σ_OO⁻¹ (a − μ_O), Σ_MM − Σ_MO Σ_OO⁻¹ Σ_OM) (paper eq. 12).

    `a` is (n, |O|); returns the (n, |M|) means and the shared (|M|, |M|) covariance.
    """
    s_oo = cov[obs][:, obs]
    s_mo = cov[miss][:, obs]
    gain = torch.linalg.solve(s_oo, s_mo.T).T  # Σ_MO Σ_OO⁻¹
    cmean = mean[miss] + (a - mean[obs]) @ gain.T
    ccov = cov[miss][:, miss] - gain @ s_mo.T
    return cmean, 0.5 * (ccov + ccov.T)


KEEP_ROWS = 50_000  # encodings after_fit keeps for the block-wise fit and the shrinkage estimate


class _Moments:
    """Count, mean, covariance (n − 1) of rows and mean of a second quantity, summed in float64 as
    batches stream by: memory stays flat in the training set's size."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.s1 = torch.zeros(dim, dtype=torch.float64)
        self.s2 = torch.zeros(dim, dim, dtype=torch.float64)
        self.v1 = torch.zeros(dim, dtype=torch.float64)

    def add(self, x: torch.Tensor, v: torch.Tensor) -> None:
        if len(x):
            x = x.detach().to("cpu", torch.float64)
            self.n += len(x)
            self.s1 += x.sum(0)
            self.s2 += x.T @ x
            self.v1 += v.detach().to("cpu", torch.float64).sum(0)

    def mean_cov_var(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = self.s1 / self.n
        cov = (self.s2 - self.n * torch.outer(mean, mean)) / (self.n - 1)
        return mean, cov, self.v1 / self.n


def cross_shrinkage(mu: torch.Tensor, obs: torch.Tensor, idx: list[list[int]]) -> float:
    """Shrinkage intensity λ of the cross-view correlations towards 0 (a block-diagonal target).

    The MSE-optimal intensity for shrinking the sample correlations r towards 0 is
    λ* = Σ Var(r_ij) / Σ E[r_ij²] over the cross-view pairs (i in view v, j in view w)
    (Schäfer & Strimmer 2005, their target D with blocks). Each r_ij is estimated on the samples
    that observe both views, and Var(r) ≈ (1 − r²)² / (n − 1), the normal-theory variance of a
    correlation: the latents are Gaussian by construction. Schäfer–Strimmer's moment estimate of
    Var(r) (from products of standardised values) overstates it for strong couplings, about 1.5×
    the Monte Carlo optimum at n = 40, ρ = 0.5, against 1.1× for this one (tests/test_uncertainty.py).
    λ → 0 as n grows; at tens of samples it removes the cross-view couplings the data cannot tell
    from noise. Written by hand: scikit-learn's Ledoit–Wolf and OAS shrink towards a scaled
    identity, which would also pull each view's own latent variances together, and take no
    missing-view pattern.
    """
    num, den = 0.0, 0.0
    for v, w in itertools.combinations(range(len(idx)), 2):
        rows = obs[:, v] & obs[:, w]
        n = int(rows.sum())
        if n < 3:
            continue
        a, b = mu[rows][:, idx[v]].double(), mu[rows][:, idx[w]].double()
        a = (a - a.mean(0)) / a.std(0).clamp_min(1e-12)
        b = (b - b.mean(0)) / b.std(0).clamp_min(1e-12)
        r = a.T @ b / (n - 1)
        num += float(((1 - r.pow(2)).pow(2) / (n - 1)).sum())
        den += float(r.pow(2).sum())
    if den <= 0:
        return 1.0 if num > 0 else 0.0
    return float(min(1.0, max(0.0, num / den)))


def shrink_cross_blocks(cov: torch.Tensor, idx: list[list[int]], lam: float) -> torch.Tensor:
    """(1 − λ)·Σ + λ·blockdiag(Σ): a convex combination of two covariances, so still one."""
    if lam == 0:
        return cov
    keep = torch.zeros_like(cov, dtype=torch.bool)
    for rows in idx:
        keep[rows[0] : rows[-1] + 1, rows[0] : rows[-1] + 1] = True
    return torch.where(keep, cov, (1.0 - lam) * cov)


# ----------------------------------------------------------------------------- the prior


class JointPrior(nn.Module):
    """N(0, Σ) over the concatenated per-view latents, Σ with identity diagonal blocks."""

    def __init__(self, dims: list[int], kind: str, alpha: float, sign_seed: int = 0) -> None:
        super().__init__()
        self.dims, self.kind, self.alpha = list(dims), kind, alpha
        if kind in ("svd", "orthogonal") and len(dims) != 2:
            raise ValueError(
                f"prior {kind!r} couples exactly two views; with {len(dims)} views use 'cholesky' or 'independent'"
            )
        gen = torch.Generator().manual_seed(sign_seed)
        signs = lambda n: torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1  # noqa: E731
        if kind == "orthogonal":
            n = max(dims)
            self.raw_o = nn.Parameter(0.01 * torch.randn(n, n, generator=gen))
            self.register_buffer("signs_o", signs(n))
        elif kind == "svd":
            n1, n2 = dims
            self.raw_u = nn.Parameter(0.01 * torch.randn(n2, n2, generator=gen))
            self.raw_v = nn.Parameter(0.01 * torch.randn(n1, n1, generator=gen))
            self.rho = nn.Parameter(torch.zeros(min(n1, n2)))
            self.register_buffer("signs_u", signs(n2))
            self.register_buffer("signs_v", signs(n1))
        elif kind == "cholesky":
            total = sum(dims)
            self.raw_l = nn.Parameter(torch.zeros(total, total))
            with torch.no_grad():
                self.raw_l.diagonal().fill_(math.log(math.e - 1.0))  # softplus → 1: Σ = I at init

    def cross(self) -> torch.Tensor:
        """C (n2 × n1), the cross block of a two-view prior."""
        n1, n2 = self.dims[0], self.dims[-1]
        if self.kind == "independent":
            return torch.zeros(n2, n1, device=self._device())
        if self.kind == "orthogonal":
            o = cayley(self.raw_o, self.signs_o)
            semi = o[:n2, :n1] if n2 >= n1 else o[:n1, :n2].T  # orthonormal columns (or rows)
            return self.alpha * semi
        if self.kind == "svd":
            k = min(n1, n2)
            u = cayley(self.raw_u, self.signs_u)[:, :k]
            v = cayley(self.raw_v, self.signs_v)[:, :k]
            return u @ torch.diag(SVD_MAX * torch.tanh(self.rho / 2)) @ v.T
        sigma = self.covariance()
        return sigma[n1:, :n1]

    def _device(self) -> torch.device:
        bufs = list(self.buffers()) + list(self.parameters())
        return bufs[0].device if bufs else torch.device("cpu")

    def covariance(self) -> torch.Tensor:
        """Σ over the concatenated latents."""
        total = sum(self.dims)
        if self.kind == "cholesky":
            lower = torch.tril(self.raw_l, -1) + torch.diag(nn.functional.softplus(self.raw_l.diagonal()) + 1e-3)
            s = lower @ lower.T
            # Normalise by the blocks: Σ = B S Bᵀ with B = blockdiag(chol(S_vv)⁻¹), so Σ_vv = I.
            # Triangular whitening, not S_vv^(-1/2) by eigendecomposition: it reaches every valid Σ
            # (take S = Σ) and its gradients stay finite at Σ = I, where eigenvalues coincide.
            blocks, start = [], 0
            for d in self.dims:
                c = torch.linalg.cholesky(s[start : start + d, start : start + d])
                blocks.append(torch.linalg.solve_triangular(c, torch.eye(d, device=c.device), upper=False))
                start += d
            b = torch.block_diag(*blocks)
            sigma = b @ s @ b.T
            return 0.5 * (sigma + sigma.T)
        if self.kind == "independent":
            return torch.eye(total, device=self._device())
        n1 = self.dims[0]
        c = self.cross()
        sigma = torch.eye(total, device=c.device, dtype=c.dtype)
        sigma[n1:, :n1] = c
        sigma[:n1, n1:] = c.T
        return sigma

    def kl(self, mus: list[torch.Tensor], logvars: list[torch.Tensor], observed: torch.Tensor) -> torch.Tensor:
        """KL of the product of per-view posteriors to the prior's marginal over observed views.

        `observed` is (n, V) bool. A missing view's latent is left out: every marginal of Σ over
        a subset of views is again N(0, Σ_OO), and a single view's marginal is N(0, I).
        """
        n = mus[0].shape[0]
        kl = torch.zeros(n, device=mus[0].device, dtype=mus[0].dtype)
        patterns = torch.unique(observed, dim=0)
        for pattern in patterns:
            rows = (observed == pattern).all(1)
            views = [v for v in range(len(self.dims)) if pattern[v]]
            if not views:
                continue
            mu = [mus[v][rows] for v in views]
            lv = [logvars[v][rows] for v in views]
            if len(views) == 1 or self.kind == "independent":
                kl[rows] = sum(diag_normal_kl(m, s) for m, s in zip(mu, lv, strict=True))
            elif self.kind == "orthogonal" and self.dims[0] == self.dims[1]:
                kl[rows] = orthogonal_prior_kl(mu[0], lv[0], mu[1], lv[1], self.cross(), self.alpha)
            elif self.kind in ("svd", "orthogonal"):
                kl[rows] = joint_prior_kl(mu[0], lv[0], mu[1], lv[1], self.cross())
            else:
                idx = self.indices(views)
                cov = self.covariance()[idx][:, idx]
                kl[rows] = gaussian_kl_full(torch.cat(mu, -1), torch.cat(lv, -1), cov)
        return kl

    def indices(self, views: list[int]) -> list[int]:
        """Positions of the given views' latents in the concatenated vector."""
        starts = [sum(self.dims[:v]) for v in range(len(self.dims))]
        return [i for v in views for i in range(starts[v], starts[v] + self.dims[v])]


# ----------------------------------------------------------------------------- the model


@register_model("jpvae")
class JPVAE(ImputationModel):
    config_class = JPVAEConfig

    def __init__(self, views: list[ViewInfo], config: JPVAEConfig) -> None:
        super().__init__(views, config)
        if len(views) < 2:
            raise ValueError("JPVAE couples views: it needs at least two")
        k = config.latent_dim
        self.encoders = nn.ModuleDict({v.name: mlp(2 * v.dim, config.hidden, 2 * k) for v in views})
        self.decoders = nn.ModuleDict(
            {v.name: mlp(k, config.hidden[::-1], lk.N_PARAMS[v.likelihood] * v.dim) for v in views}
        )
        kind = config.prior if config.prior != "auto" else ("orthogonal" if len(views) == 2 else "cholesky")
        self.prior = JointPrior([k] * len(views), kind, config.alpha, config.sign_seed)
        total = k * len(views)
        self.register_buffer("cond_mean", torch.zeros(total))
        self.register_buffer("cond_cov", torch.eye(total))
        self.register_buffer("cond_fitted", torch.tensor(False))
        self.register_buffer("cross_shrinkage_", torch.tensor(0.0))  # λ applied to Σ̂ (after_fit)
        # Σ̂ of the encoder means alone: the gain of the point imputation's conditional mean (`impute_mean`)
        self.register_buffer("cond_cov_means", torch.eye(total))
        # per bounded view, (2, d_v): the variance of the decoded location over the latent spread of a
        # missing entry, for an entry missing inside an observed view (row 0) and a whole missing view (row 1)
        self._point_var_names = {v.name: f"point_var_{i}" for i, v in enumerate(views) if v.likelihood == "bounded"}
        for info in views:
            if info.name in self._point_var_names:
                self.register_buffer(self._point_var_names[info.name], torch.zeros(2, info.dim))
        # a count view's decoded mean is capped at the largest count each column showed in training
        # (`after_fit`; +inf until then, so training is unaffected): see `decode`
        self._cap_names = {
            v.name: f"count_cap_{i}" for i, v in enumerate(views) if v.likelihood in lk.COUNT_LIKELIHOODS
        }
        for info in views:
            if info.name in self._cap_names:
                self.register_buffer(self._cap_names[info.name], torch.full((info.dim,), math.inf))
        self._likelihood = {v.name: v.likelihood for v in views}

    # -- pieces
    def encode(self, batch: MultiViewBatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        mus, logvars = [], []
        for info in self.view_infos:
            h = self.encoders[info.name](encoder_input(batch, info.name, info.likelihood))
            mu, logvar = h.chunk(2, dim=-1)
            mus.append(mu)
            logvars.append(logvar.clamp(-12.0, 8.0))
        return mus, logvars

    def decode(self, view: str, z: torch.Tensor) -> torch.Tensor:
        """The decoder's raw output; for a count view with its mean capped at the training maximum.

        Not in MODELS.md. The decoders' log-mean is linear-ish in z, so a latent drawn or conditioned
        far out (an observed view unlike the training samples, a wide conditional at small n) decodes
        to counts many orders above any seen: on synthetic-omics with 40 samples (seed 0, a view
        hidden) one test row's imputed count was 6,837 against a training maximum of 61, which made
        the pooled RMSE 289 against the column mean's 2.90. The cap acts only above the training
        maximum of each column."""
        raw = self.decoders[view](z)
        cap_name = self._cap_names.get(view)
        if cap_name is None:
            return raw
        cap = getattr(self, cap_name)  # +inf (no cap) until `after_fit`: the minimum below is then a no-op
        if self._likelihood[view] == "negative_binomial":  # (log-mean, log-θ): cap the log-mean
            log_mean, log_theta = raw.chunk(2, dim=-1)
            return torch.cat([torch.minimum(log_mean, torch.log(cap)), log_theta], dim=-1)
        # poisson: mean softplus(raw) + 1e-6, so cap raw at softplus⁻¹(cap)
        return torch.minimum(raw, cap + torch.log(-torch.expm1(-cap)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the count caps existed load with no cap (as they were trained)
        for name in self._cap_names.values():
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        state_dict.setdefault(prefix + "cross_shrinkage_", torch.tensor(0.0))  # older: not shrunk
        # older: the point imputation's gain from Σ̂ itself, and no location spread (the plug-in)
        if prefix + "cond_cov" in state_dict:
            state_dict.setdefault(prefix + "cond_cov_means", state_dict[prefix + "cond_cov"].clone())
        for name in self._point_var_names.values():
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def observed_views(self, batch: MultiViewBatch) -> torch.Tensor:
        return torch.stack([batch.view_observed(v) for v in self.view_names], dim=1)

    # -- training
    def observed_log_lik(self, info: ViewInfo, raw: torch.Tensor, batch: MultiViewBatch) -> torch.Tensor:
        """Per row, the log-likelihood of the view's observed entries under the decoder output `raw`."""
        return (lk.log_prob(info.likelihood, raw, batch.values[info.name]) * batch.masks[info.name]).sum(-1)

    def loss(self, batch: MultiViewBatch, progress: float = 1.0) -> LossOutput:
        mus, logvars = self.encode(batch)
        observed = self.observed_views(batch)
        comps: dict[str, float] = {}
        rec = torch.zeros(len(batch), device=mus[0].device)
        draws = []
        for info, mu, logvar in zip(self.view_infos, mus, logvars, strict=True):
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            draws.append(z)
            ll = self.observed_log_lik(info, self.decode(info.name, z), batch)
            rec = rec - ll
            comps[f"rec_{info.name}"] = float(-ll.detach().mean())
        kl = self.prior.kl(mus, logvars, observed)
        beta = self.config.kl_weight * cyclical_kl_weight(progress, self.config.kl_cycles)
        per_row = rec + beta * kl
        if self.config.cross_weight > 0 and self.prior.kind != "independent":  # independent: Σ_vu = 0
            cross = self.cross_reconstruction(batch, draws, observed)
            per_row = per_row + self.config.cross_weight * cross
            comps["cross"] = float(cross.detach().mean())
        comps.update(rec=float(rec.detach().mean()), kl=float(kl.detach().mean()), beta_kl=beta)
        return LossOutput(per_row.mean(), comps)

    def cross_reconstruction(
        self, batch: MultiViewBatch, draws: list[torch.Tensor], observed: torch.Tensor
    ) -> torch.Tensor:
        """Per row, the negative log-likelihood of each observed view decoded from the prior's
        conditional mean given the other observed views' latent draws (`draws`, the ones the
        reconstruction used), one at a time: E[z_v | z_u] = Σ_vu z_u (Σ_uu = I). Not in the paper: it
        trains the decoders on what a whole missing view is imputed from, a latent predicted from
        another view."""
        sigma = self.prior.covariance()
        out = torch.zeros(len(batch), device=draws[0].device, dtype=draws[0].dtype)
        for v, info in enumerate(self.view_infos):
            for u in range(len(self.view_infos)):
                if u == v:
                    continue
                both = (observed[:, u] & observed[:, v]).to(out.dtype)
                block = sigma[self.prior.indices([v])][:, self.prior.indices([u])]
                out = out - both * self.observed_log_lik(info, self.decode(info.name, draws[u] @ block.T), batch)
        return out

    @torch.no_grad()
    def after_fit(self, batches) -> None:
        """Fit the empirical latent Gaussian (μ̂, Σ̂) on training encodings.

        Departure from MODELS.md (which fits Σ̂ on the encoder means): by the law of total
        variance, Cov(z) = Cov_x(E[z|x]) + E_x[Var(z|x)], so Σ̂ = Cov(μ) + mean diag(σ²) — the
        encoders' variance is part of the latent spread a missing view is drawn from.
        Σ̂ is fitted on the samples with every view observed when there are more of them than
        latent dimensions; otherwise (small data, many views) block by block: each view's mean and
        block from the samples observing it, each cross block from the samples observing both
        views (zero when fewer than 3 do), then the nearest covariance with eigenvalues ≥ 1e-4.
        Departure for small data: Σ̂'s cross-view blocks are then multiplied by 1 − λ
        (`JPVAEConfig.cross_shrinkage`: 0 by default, "auto" below 1,000 samples — the Schäfer–Strimmer
        intensity estimated on the pairwise-observed samples, see `cross_shrinkage`). With tens of
        samples, the fitted cross-view couplings are mostly noise, and a missing view conditioned
        on them extrapolates.
        The count caps are each count column's largest observed training value.
        Σ̂ of the encoder means alone (`cond_cov_means`, shrunk alike) gives the point imputation's gain,
        and the bounded views' location spread is fitted last (`_fit_point_var`); see `impute_mean`.
        """
        empirical = self.config.conditional == "empirical"
        top: dict[str, torch.Tensor] = {}  # each count column's largest observed training value
        total = self.cond_mean.numel()
        moments = _Moments(total)  # the samples with every view observed, summed as they stream by
        mus_all, vars_all, obs_all = [], [], []  # the first KEEP_ROWS encodings, for what needs rows
        kept = 0
        if empirical or self._cap_names:
            for batch in batches():  # one pass over the training data for both
                for view in self._cap_names:
                    seen = torch.where(batch.masks[view] > 0, batch.values[view], -math.inf).amax(0)
                    top[view] = seen if view not in top else torch.maximum(top[view], seen)
                if empirical:
                    mus, logvars = self.encode(batch)
                    mu_b, var_b, obs_b = torch.cat(mus, -1), torch.cat(logvars, -1).exp(), self.observed_views(batch)
                    complete_b = obs_b.all(1)
                    moments.add(mu_b[complete_b], var_b[complete_b])
                    if kept < KEEP_ROWS:
                        take = KEEP_ROWS - kept
                        mus_all.append(mu_b[:take])
                        vars_all.append(var_b[:take])
                        obs_all.append(obs_b[:take])
                        kept += len(mus_all[-1])
        for view, cap in top.items():
            buf = getattr(self, self._cap_names[view])
            buf.copy_(torch.where(torch.isfinite(cap) & (cap > 0), cap, math.inf).to(buf))
        if empirical:
            mu = torch.cat(mus_all) if mus_all else torch.zeros(0, total)
            var = torch.cat(vars_all) if vars_all else torch.zeros(0, total)
            obs = torch.cat(obs_all) if obs_all else torch.zeros(0, len(self.view_infos), dtype=torch.bool)
            fitted = None
            if moments.n > total:
                mean, cov_means, var_mean = (t.to(self.cond_mean) for t in moments.mean_cov_var())
                fitted = mean, cov_means + torch.diag(var_mean), cov_means
            elif bool((obs.sum(0) >= 2).all()):
                mean, cov = self._blockwise_gaussian(mu, var, obs)
                fitted = mean, cov, self._blockwise_gaussian(mu, torch.zeros_like(var), obs)[1]
            else:
                warnings.warn(
                    f"only {moments.n} training samples have every view observed and some view is "
                    "observed in fewer than 2: imputing from the prior instead",
                    stacklevel=2,
                )
            if fitted is not None:
                mean, cov, cov_means = fitted
                idx = [self.prior.indices([v]) for v in range(len(self.view_infos))]
                lam = self.config.cross_shrinkage
                if lam == "auto":
                    lam = cross_shrinkage(mu, obs, idx)
                eye = 1e-5 * torch.eye(cov.shape[0], device=cov.device)
                self.cross_shrinkage_.fill_(lam)
                self.cond_mean.copy_(mean)
                self.cond_cov.copy_(shrink_cross_blocks(cov, idx, lam) + eye)
                self.cond_cov_means.copy_(shrink_cross_blocks(cov_means, idx, lam) + eye)
                self.cond_fitted.fill_(True)
        self._fit_point_var(batches)
        super().after_fit(batches)

    def _blockwise_gaussian(
        self, mu: torch.Tensor, var: torch.Tensor, obs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ̂, Σ̂) from per-view and pairwise-observed samples (see `after_fit`)."""
        n_views = len(self.view_infos)
        idx = [self.prior.indices([v]) for v in range(n_views)]
        mean = torch.zeros(mu.shape[1], dtype=mu.dtype, device=mu.device)
        for v in range(n_views):
            mean[idx[v]] = mu[obs[:, v]][:, idx[v]].mean(0)
        centred = mu - mean
        cov = torch.zeros(mu.shape[1], mu.shape[1], dtype=mu.dtype, device=mu.device)
        for v in range(n_views):
            for w in range(v, n_views):
                rows = obs[:, v] & obs[:, w]
                if int(rows.sum()) < (2 if v == w else 3):
                    continue
                a, b = centred[rows][:, idx[v]], centred[rows][:, idx[w]]
                block = a.T @ b / (int(rows.sum()) - 1)
                if v == w:
                    block = block + torch.diag(var[rows][:, idx[v]].mean(0))
                cov[idx[v][0] : idx[v][-1] + 1, idx[w][0] : idx[w][-1] + 1] = block
                cov[idx[w][0] : idx[w][-1] + 1, idx[v][0] : idx[v][-1] + 1] = block.T
        evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
        evals = evals.clamp_min(1e-4 * float(evals.max().clamp_min(1e-8)))
        return mean, (evecs * evals) @ evecs.T

    def latent_gaussian(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ̂, Σ̂) used to impute missing views: empirical if fitted, else the prior."""
        if self.config.conditional == "empirical" and bool(self.cond_fitted):
            return self.cond_mean, self.cond_cov
        sigma = self.prior.covariance()
        return torch.zeros(sigma.shape[0], device=sigma.device), sigma

    # -- imputation
    @torch.no_grad()
    def latents(self, batch: MultiViewBatch, n_samples: int | None, common_noise: bool = False) -> list[torch.Tensor]:
        """Per-view latents (S, n, k). Observed views: draws from their encoders q(z_v|x_v).
        Missing views: draws from the conditional Gaussian of (μ̂, Σ̂) given *each draw* of the
        observed views' latents (departure from MODELS.md, which conditions on the encoder means),
        so the encoders' variance reaches the draws. `None` = point imputation from the means (S = 1).
        `common_noise`: the same S standard-normal vectors for every row (common random numbers),
        so that a row's draws do not depend on the rest of its batch."""
        mus, logvars = self.encode(batch)
        observed = self.observed_views(batch)
        s = 1 if n_samples is None else n_samples

        def noise(shape, device) -> torch.Tensor:
            if common_noise:
                return torch.randn(shape[0], *([1] * (len(shape) - 2)), shape[-1], device=device).expand(shape)
            return torch.randn(shape, device=device)

        cond_noise = [noise((s, 1, mu.shape[-1]), mu.device) for mu in mus] if common_noise else None
        out = [
            (
                mu.expand(s, *mu.shape)
                if n_samples is None
                else mu + noise((s, *mu.shape), mu.device) * torch.exp(0.5 * lv)
            ).clone()
            for mu, lv in zip(mus, logvars, strict=True)
        ]
        mean, cov = self.latent_gaussian()
        n_views = len(self.view_infos)
        for pattern in torch.unique(observed, dim=0):
            if pattern.all() or not pattern.any():
                continue
            rows = (observed == pattern).all(1)
            obs_v = [v for v in range(n_views) if pattern[v]]
            miss_v = [v for v in range(n_views) if not pattern[v]]
            o_idx, m_idx = self.prior.indices(obs_v), self.prior.indices(miss_v)
            a = torch.cat([out[v][:, rows] for v in obs_v], -1)  # (S, n_rows, |O|)
            cmean, ccov = gaussian_conditional(mean, cov, o_idx, m_idx, a.reshape(-1, a.shape[-1]))
            cmean = cmean.reshape(s, -1, cmean.shape[-1])
            if n_samples is None:
                z = cmean
            else:
                chol = torch.linalg.cholesky(ccov + 1e-6 * torch.eye(ccov.shape[0], device=ccov.device))
                if cond_noise is not None:  # per missing view, so independent of which patterns the batch holds
                    eps = torch.cat([cond_noise[v] for v in miss_v], -1).expand(cmean.shape)
                else:
                    eps = torch.randn(cmean.shape, device=cmean.device)
                z = cmean + eps @ chol.T
            start = 0
            for v in miss_v:
                k = self.prior.dims[v]
                out[v][:, rows] = z[..., start : start + k]
                start += k
        # samples with no view observed: the prior
        none = ~observed.any(1)
        if none.any():
            for v in range(n_views):
                out[v][:, none] = 0.0 if n_samples is None else noise(out[v][:, none].shape, out[v].device)
        return out

    @torch.no_grad()
    def impute(self, batch: MultiViewBatch, n_samples: int, censored: bool = True) -> dict[str, torch.Tensor]:
        zs = self.latents(batch, n_samples)
        out = {}
        for info, z in zip(self.view_infos, zs, strict=True):
            raw = self.decode(info.name, z)
            if self.config.sample_noise:  # a predictive draw from the observation model
                out[info.name] = lk.sample(info.likelihood, raw, censored).to(z.dtype)
            else:
                out[info.name] = lk.mean(info.likelihood, raw)
        return self.keep_observed(batch, out)

    # -- the point imputation
    def point_gaussian(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(μ̂, Σ̂ of the encoder means, Σ̂) of the point imputation: empirical if fitted, else the prior
        (whose two covariances are the same Σ_C)."""
        if self.config.conditional == "empirical" and bool(self.cond_fitted):
            return self.cond_mean, self.cond_cov_means, self.cond_cov
        mean, sigma = self.latent_gaussian()
        return mean, sigma, sigma

    def point_conditional(self, obs: list[int], miss: list[int], a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E[z_M | x_O] (n, |M|) and Var(z_M | x_O) (|M|, |M|), `a` the observed views' encoder means.

        The regression of the missing latents on the observed encoder *means*: gain Σ_MO Σ_OO⁻¹ of the
        means' covariance, not of Σ̂ = Cov(μ) + E[diag σ²] (whose larger Σ_OO shrinks the gain, as if the
        means were noisy measurements: on digits-halves that drew the point imputation toward the
        average digit). The spread about it is what the means leave unexplained plus the missing views'
        own encoder variance, Var = Σ̂_MM − G Cov(μ)_OM."""
        mean, cov_means, cov = self.point_gaussian()
        cmean, ccov = gaussian_conditional(mean, cov_means, obs, miss, a)
        spread = ccov + cov[miss][:, miss] - cov_means[miss][:, miss]
        return cmean, 0.5 * (spread + spread.T)

    @torch.no_grad()
    def point_latents(self, batch: MultiViewBatch) -> list[torch.Tensor]:
        """Per-view latents (n, k) of the point imputation: an observed view's encoder mean, a missing
        view's E[z_M | x_O] (`point_conditional`); μ̂ for rows with no view observed."""
        mus, _ = self.encode(batch)
        observed = self.observed_views(batch)
        out = [mu.clone() for mu in mus]
        mean = self.point_gaussian()[0]
        n_views = len(self.view_infos)
        for pattern in torch.unique(observed, dim=0):
            if pattern.all():
                continue
            rows = (observed == pattern).all(1)
            obs_v = [v for v in range(n_views) if pattern[v]]
            miss_v = [v for v in range(n_views) if not pattern[v]]
            if obs_v:
                a = torch.cat([mus[v][rows] for v in obs_v], -1)
                z = self.point_conditional(self.prior.indices(obs_v), self.prior.indices(miss_v), a)[0]
            else:
                z = mean[self.prior.indices(miss_v)].expand(int(rows.sum()), -1)
            start = 0
            for v in miss_v:
                k = self.prior.dims[v]
                out[v][rows] = z[:, start : start + k]
                start += k
        return out

    def _location_scale(self, view: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A bounded view's decoded location and scale at latents z."""
        dist = lk.distribution("bounded", self.decode(view, z))
        return dist.loc, dist.scale

    @torch.no_grad()
    def _fit_point_var(self, batches, n_draws: int = 32, max_rows: int = 4096) -> None:
        """Each bounded column's variance of the decoded location over the latent spread of a missing
        entry, averaged over (up to `max_rows`) training rows that observe its view: for an entry
        missing inside the view, over draws from the view's own encoder; for the whole view missing,
        over draws from `point_conditional` given the row's other views (rows observing another view)."""
        if not self._point_var_names:
            return
        gen = torch.Generator().manual_seed(0)
        sums = {v: [0.0, 0.0] for v in self._point_var_names}
        counts = {v: [0, 0] for v in self._point_var_names}
        n_views, seen = len(self.view_infos), 0
        for batch in batches():
            mus, logvars = self.encode(batch)
            observed = self.observed_views(batch)
            for i, info in enumerate(self.view_infos):
                if info.name not in self._point_var_names:
                    continue
                has = observed[:, i]
                if has.any():
                    eps = torch.randn(n_draws, int(has.sum()), mus[i].shape[-1], generator=gen).to(mus[i])
                    loc, _ = self._location_scale(info.name, mus[i][has] + eps * torch.exp(0.5 * logvars[i][has]))
                    sums[info.name][0] = sums[info.name][0] + loc.var(0).sum(0)
                    counts[info.name][0] += int(has.sum())
                others = observed.clone()
                others[:, i] = False
                rows = has & others.any(1)
                for pattern in torch.unique(others[rows], dim=0):
                    sel = rows & (others == pattern).all(1)
                    obs_v = [v for v in range(n_views) if pattern[v]]
                    miss_v = [v for v in range(n_views) if not pattern[v]]
                    a = torch.cat([mus[v][sel] for v in obs_v], -1)
                    cmean, spread = self.point_conditional(self.prior.indices(obs_v), self.prior.indices(miss_v), a)
                    chol = torch.linalg.cholesky(spread + 1e-6 * torch.eye(spread.shape[0], device=spread.device))
                    eps = torch.randn(n_draws, *cmean.shape, generator=gen).to(cmean)
                    start = sum(self.prior.dims[v] for v in miss_v[: miss_v.index(i)])
                    z = (cmean + eps @ chol.T)[..., start : start + self.prior.dims[i]]
                    loc, _ = self._location_scale(info.name, z)
                    sums[info.name][1] = sums[info.name][1] + loc.var(0).sum(0)
                    counts[info.name][1] += int(sel.sum())
            seen += len(batch)
            if seen >= max_rows:
                break
        for view, name in self._point_var_names.items():
            buf = getattr(self, name)
            for kind in range(2):
                if counts[view][kind]:
                    buf[kind] = sums[view][kind] / counts[view][kind]

    @torch.no_grad()
    def impute_mean(self, batch: MultiViewBatch) -> dict[str, torch.Tensor]:
        """The point imputation E[y | observed], one decode of the rows with something missing in a view.

        Each missing view's latent is its conditional mean given the observed views' encoder means
        (`point_conditional`), an observed view's latent its encoder mean, decoded to the likelihood's
        mean. A `bounded` view's censored mean is nonlinear in the location, so averaging it over the
        latent spread differs from decoding the mean latent (the blur toward grey that the squared error
        rewards): its decoded location is taken as Gaussian about the decoded one with the fitted
        per-column variance of its kind (`point_var_*`, `_fit_point_var`), and its mean is the censored
        mean of N(location, scale² + that variance) — exact for a decoder linear in z with a constant
        scale. Departure from MODELS.md (which decodes the conditional latent mean as it is). Measured on
        digits-halves, docs/jpvae.md ("Point imputation"). Deterministic and row by row: a row's
        imputation does not depend on its batch."""
        zs = self.point_latents(batch)
        missing_view = self.view_missing(batch)
        out = {}
        for info, z in zip(self.view_infos, zs, strict=True):
            values = batch.values[info.name]
            need = (batch.masks[info.name] == 0).any(1)
            filled = values.clone()
            if need.any():
                if info.name in self._point_var_names:
                    loc, scale = self._location_scale(info.name, z[need])
                    var = getattr(self, self._point_var_names[info.name])[missing_view[info.name][need].long()]
                    est = lk.CensoredNormal(loc, torch.sqrt(scale.pow(2) + var)).mean
                else:
                    est = lk.mean(info.likelihood, self.decode(info.name, z[need]))
                filled[need] = est.to(values.dtype)
            out[info.name] = filled
        return self.keep_observed(batch, out)

    @torch.no_grad()
    def active_units(self, batch: MultiViewBatch, threshold: float = 0.01) -> dict[str, float]:
        """Share of latent dims with Var_x(E_q[z]) > threshold, per view (over samples observing it)."""
        mus, _ = self.encode(batch)
        out = {}
        for info, mu in zip(self.view_infos, mus, strict=True):
            rows = batch.view_observed(info.name)
            out[info.name] = float((mu[rows].var(0) > threshold).float().mean()) if rows.sum() > 1 else float("nan")
        return out
