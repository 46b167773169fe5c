"""The likelihood vocabulary: names, inference from data, checks, and the per-entry distributions.

This module sits below both `mvimpute.data` (which infers and checks a view's likelihood) and
`mvimpute.models` (whose decoders parameterise these distributions); it imports numpy and torch
only.

Likelihoods, per view:

- `binary` — Bernoulli on {0, 1}; draws are bits.
- `bounded` — continuous data in [0, 1] with mass at the bounds: a Gaussian N(μ, σ²) with learned
  variance censored to [0, 1] (a value below 0 is recorded as 0, above 1 as 1). Its density is
  N(y; μ, σ²) inside (0, 1) and it puts mass Φ(−μ/σ) on 0 and Φ((μ − 1)/σ) on 1; a draw is
  `clamp(N(μ, σ²), 0, 1)`. The draw before the clamp (`censored=False`) is the latent value
  the censoring recorded; calibration works on it (see `models/calibration.py`).
  *Why censored Gaussian and not a zero/one-inflated Beta.* On digits-halves half of the hidden
  pixels are exactly 0 and ~9 % exactly 1, so any density on (0, 1) (Beta, continuous Bernoulli)
  covers none of them. A Gaussian with learned variance whose draws are clipped to [0, 1] covered
  0.92 (bottom view hidden) and 0.88 (50 % MCAR) of hidden pixels at the CRPS of the BCE model
  (JPVAE, digits-halves); the censored Gaussian is exactly that draw, now with the matching
  likelihood (the bounds' mass enters training as log Φ). It needs two decoder outputs per entry,
  a zero/one-inflated Beta four (π₀, π₁, a, b), and a Beta's log-density is unbounded near the
  bounds, where most of the data are. The zero/one-inflated Beta was not implemented or measured.
- `bernoulli` — the JPVAE paper's binary cross-entropy on intensities in [0, 1] (soft labels);
  its draws are Bernoulli bits. Selectable only (not inferred): for grey levels use `bounded`.
- `gaussian` — N(μ, σ²) with learned variance (views are standardised by default).
- `poisson`, `negative_binomial` — counts (non-negative integers).

Inference (`infer_likelihood`): {0, 1} data → `binary`; other data inside [0, 1] → `bounded`;
non-negative integers → `negative_binomial`; anything else → `gaussian`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import distributions as D

LIKELIHOODS = ("binary", "bounded", "bernoulli", "gaussian", "poisson", "negative_binomial")
# Likelihoods that model raw values: their view's scaling must be "none".
RAW_LIKELIHOODS = ("binary", "bounded", "bernoulli", "poisson", "negative_binomial")
COUNT_LIKELIHOODS = ("poisson", "negative_binomial")
BINARY_LIKELIHOODS = ("binary", "bernoulli")
DEFAULT_SCALING = {lk: ("standard" if lk == "gaussian" else "none") for lk in LIKELIHOODS}
BOUNDS = (0.0, 1.0)  # the range of a `bounded` view
N_PARAMS = {"binary": 1, "bounded": 2, "bernoulli": 1, "gaussian": 2, "poisson": 1, "negative_binomial": 2}
LOGVAR_FLOOR = -9.0


def _soft_floor(x: torch.Tensor, floor: float) -> torch.Tensor:
    return floor + F.softplus(x - floor)


# ----------------------------------------------------------------------------- inference and checks


def infer_from_stats(lo: float, hi: float, all_integer: bool, seen: bool = True) -> str:
    """The inference rule from a view's observed min, max and integrality (shared by the in-memory
    and the streamed Ray Data readers)."""
    if not seen:
        return "gaussian"
    if lo >= 0 and hi <= 1:
        return "binary" if all_integer else "bounded"
    if lo >= 0 and all_integer:
        return "negative_binomial"
    return "gaussian"


def infer_likelihood(values: np.ndarray) -> str:
    """`binary` for {0, 1} data, `bounded` for other data in [0, 1], `negative_binomial` for
    non-negative integers, else `gaussian` (NaN = missing is ignored)."""
    obs = np.asarray(values, dtype=np.float64)
    obs = obs[~np.isnan(obs)]
    if obs.size == 0:
        return "gaussian"
    return infer_from_stats(float(obs.min()), float(obs.max()), bool(np.all(obs == np.round(obs))))


def check_name(view: str, likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"view {view!r}: unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")


def check_values(view: str, columns: Sequence[str], values: np.ndarray, likelihood: str) -> None:
    """A `ValueError` naming view and column when observed values contradict `likelihood`:
    `binary` outside {0, 1}, `bounded` / `bernoulli` outside [0, 1], counts negative or fractional."""
    check_name(view, likelihood)
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 2 or likelihood == "gaussian":
        return
    obs = ~np.isnan(a)
    x = np.where(obs, a, 0.0)
    if likelihood == "binary":
        bad, what = obs & (x != 0) & (x != 1), "values other than 0 and 1"
    elif likelihood in ("bounded", "bernoulli"):
        bad, what = obs & ((x < BOUNDS[0]) | (x > BOUNDS[1])), f"values outside [{BOUNDS[0]:g}, {BOUNDS[1]:g}]"
    else:
        bad, what = obs & ((x < 0) | (x != np.round(x))), "negative or non-integer values"
    if bad.any():
        j = int(np.argwhere(bad.any(0))[0, 0])
        example = float(x[bad[:, j], j][0])
        name = columns[j] if j < len(columns) else str(j)
        raise ValueError(
            f"view {view!r}, column {name!r}: likelihood {likelihood!r} does not fit {what} "
            f"({int(bad[:, j].sum())} row(s), e.g. {example:g}); choose another likelihood or let it be inferred"
        )


# ----------------------------------------------------------------------------- the censored Gaussian


def _phi(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)


class CensoredNormal:
    """N(loc, scale²) censored to [lo, hi]: mass Φ(α) at lo, Φ(−β) at hi, density inside.

    α = (lo − μ)/σ, β = (hi − μ)/σ. `log_prob` is with respect to Lebesgue measure on (lo, hi)
    plus point masses at the bounds (the mixed measure under which a censored value has a density).
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, lo: float = BOUNDS[0], hi: float = BOUNDS[1]) -> None:
        self.loc, self.scale, self.lo, self.hi = loc, scale, lo, hi

    def _ab(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.lo - self.loc) / self.scale, (self.hi - self.loc) / self.scale

    def log_prob(self, y: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        a, b = self._ab()
        inner = D.Normal(self.loc, self.scale).log_prob(y)
        at_lo = torch.special.log_ndtr(a)
        at_hi = torch.special.log_ndtr(-b)
        return torch.where(y <= self.lo + tol, at_lo, torch.where(y >= self.hi - tol, at_hi, inner))

    def sample(self, sample_shape: tuple[int, ...] = (), censored: bool = True) -> torch.Tensor:
        """Draws clamped to [lo, hi]; with `censored=False`, the latent N(loc, scale²) draws."""
        with torch.no_grad():
            x = D.Normal(self.loc, self.scale).sample(torch.Size(sample_shape))
            return x.clamp(self.lo, self.hi) if censored else x

    @property
    def mean(self) -> torch.Tensor:
        a, b = self._ab()
        pa, pb = torch.special.ndtr(a), torch.special.ndtr(b)
        return self.lo * pa + self.hi * (1 - pb) + self.loc * (pb - pa) + self.scale * (_phi(a) - _phi(b))

    @property
    def variance(self) -> torch.Tensor:
        a, b = self._ab()
        pa, pb = torch.special.ndtr(a), torch.special.ndtr(b)
        inside = pb - pa
        mu, s = self.loc, self.scale
        second = (
            self.lo**2 * pa
            + self.hi**2 * (1 - pb)
            + mu**2 * inside
            + 2 * mu * s * (_phi(a) - _phi(b))
            + s**2 * (inside + a * _phi(a) - b * _phi(b))
        )
        return (second - self.mean**2).clamp_min(0.0)


# ----------------------------------------------------------------------------- decoder distributions (JPVAE)


def distribution(likelihood: str, raw: torch.Tensor):
    """The per-entry distribution from a decoder's raw output (..., N_PARAMS * d)."""
    if likelihood in BINARY_LIKELIHOODS:
        return D.Bernoulli(logits=raw)
    if likelihood in ("gaussian", "bounded"):
        mu, logvar = raw.chunk(2, dim=-1)
        scale = torch.exp(0.5 * _soft_floor(logvar, LOGVAR_FLOOR))
        return D.Normal(mu, scale) if likelihood == "gaussian" else CensoredNormal(mu, scale)
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
    """Element-wise log p(y | decoder output). `bernoulli` accepts y in [0, 1] (soft labels: BCE)."""
    if likelihood in BINARY_LIKELIHOODS:
        return -F.binary_cross_entropy_with_logits(raw, y, reduction="none")
    dist = distribution(likelihood, raw)
    if likelihood in COUNT_LIKELIHOODS:
        y = y.clamp_min(0).round()
    return dist.log_prob(y)


def mean(likelihood: str, raw: torch.Tensor) -> torch.Tensor:
    """The predictive mean E[y | decoder output]."""
    return distribution(likelihood, raw).mean


def sample(likelihood: str, raw: torch.Tensor, censored: bool = True) -> torch.Tensor:
    """One draw y ~ p(y | decoder output): a bit, a censored value, a count or a real — never the mean.
    `censored=False` leaves a `bounded` draw unclamped (the latent Gaussian value); `censor` clamps it."""
    dist = distribution(likelihood, raw)
    x = dist.sample(censored=censored) if isinstance(dist, CensoredNormal) else dist.sample()
    return x.to(raw.dtype)


def censor(likelihood: str, x: torch.Tensor) -> torch.Tensor:
    """A `bounded` view's latent draws clamped to its range (what `censored=True` draws); others as they are."""
    return x.clamp(*BOUNDS) if likelihood == "bounded" else x


# ----------------------------------------------------------------------------- Gaussian-link observations
# TAE, MVAE and MIWAE share a Gaussian q(x|z) over the concatenated views (MODELS.md §1). A view's
# likelihood enters as the observation of that Gaussian: `bounded` censors it to [0, 1], `binary`
# thresholds it at 1/2 (a probit model: P(y = 1) = Φ((μ − ½)/σ)), counts round it to a non-negative
# integer; `gaussian` and `bernoulli` keep it as it is (the BCE protocol is JPVAE's).


def link_log_prob(likelihood: str, y: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Element-wise log p(y | x ~ N(μ, exp(logvar))) under the view's observation of x."""
    if likelihood == "bounded":
        return CensoredNormal(mu, torch.exp(0.5 * logvar)).log_prob(y)
    if likelihood == "binary":
        t = (mu - 0.5) * torch.exp(-0.5 * logvar)
        return torch.where(y > 0.5, torch.special.log_ndtr(t), torch.special.log_ndtr(-t))
    return -0.5 * (math.log(2 * math.pi) + logvar + (y - mu) ** 2 * torch.exp(-logvar))


def link_sample(likelihood: str, x: torch.Tensor, censored: bool = True) -> torch.Tensor:
    """The observation of a Gaussian draw x (`censored=False`: a `bounded` view's x unclamped)."""
    if likelihood == "bounded":
        return x.clamp(*BOUNDS) if censored else x
    if likelihood == "binary":
        return (x > 0.5).to(x.dtype)
    if likelihood in COUNT_LIKELIHOODS:
        return x.round().clamp_min(0)
    return x


def link_mean(likelihood: str, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """E[observation of x], x ~ N(μ, exp(logvar))."""
    if likelihood == "bounded":
        return CensoredNormal(mu, torch.exp(0.5 * logvar)).mean
    if likelihood == "binary":
        return torch.special.ndtr((mu - 0.5) * torch.exp(-0.5 * logvar))
    if likelihood in COUNT_LIKELIHOODS:
        return mu.clamp_min(0)
    return mu
