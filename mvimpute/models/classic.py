"""Classic imputers as models: column mean, k nearest neighbours and MICE, each with predictive draws.

They have no parameters trained by gradient steps: each is fitted in one pass over the training
data in `after_fit` (the training loop runs no epochs for a `one_pass` model), and then calibrated
by the same split-conformal calibration as the deep models. What they learn is kept as buffers, so a
checkpoint stays a plain state dict of tensors; buffers whose size depends on the data are resized
to the stored shapes when a checkpoint is loaded.

- `mean`: the column mean of the observed training entries; draws from the column's empirical
  distribution (stored as `quantiles` of its observed values, not the values themselves).
- `knn`: the mean of the k nearest training rows that observe the entry (nan-Euclidean distance on
  the features both rows observe, as scikit-learn's `KNNImputer`); draws are those neighbours'
  values. The checkpoint holds the training rows (`training_rows_held`).
- `mice`: chained Bayesian ridge regressions fitted by scikit-learn's `IterativeImputer`
  (`sample_posterior=True`); the final round's regressions are kept as arrays and each draw is a
  Gibbs chain through them.

Everything above is in the model's scaled space (views standardised or raw, as the schema says).
scikit-learn is imported only to fit MICE: imputing needs torch alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .. import likelihoods as lk
from ..batch import MultiViewBatch
from .base import ImputationModel, LossOutput, ViewInfo, register_model

CHUNK_ELEMENTS = 2**22  # bound on the elements of one chunk's working tensors (rows × candidates × columns)


@dataclass
class MeanConfig:
    """`quantiles`: atoms of each column's stored empirical distribution (its draws)."""

    quantiles: int = 256

    def __post_init__(self) -> None:
        if self.quantiles < 2:
            raise ValueError(f"quantiles must be >= 2, got {self.quantiles}")


@dataclass
class KNNConfig:
    """`k`: neighbours per missing entry (each among the training rows that observe it)."""

    k: int = 10

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


@dataclass
class MICEConfig:
    """`n_iter`: rounds of chained regressions when fitting (scikit-learn's `max_iter`); `sweeps`:
    Gibbs sweeps through the final round's regressions per draw when imputing, from the column
    means; `n_nearest_features`: predictors per regression (None: all other columns)."""

    n_iter: int = 10
    sweeps: int = 10
    n_nearest_features: int | None = None

    def __post_init__(self) -> None:
        if self.n_iter < 1 or self.sweeps < 1:
            raise ValueError(f"n_iter and sweeps must be >= 1, got {self.n_iter}, {self.sweeps}")
        if self.n_nearest_features is not None and self.n_nearest_features < 1:
            raise ValueError(f"n_nearest_features must be >= 1 or None, got {self.n_nearest_features}")


class OnePassModel(ImputationModel):
    """A model fitted in one pass over the training data (`fit_rows`, called by `after_fit`)."""

    one_pass = True

    def __init__(self, views: list[ViewInfo], config) -> None:
        super().__init__(views, config)
        self.dims = [v.dim for v in views]
        self.likelihoods = [v.likelihood for v in views]
        self.register_buffer("is_fitted", torch.tensor(False))

    @property
    def data_dim(self) -> int:
        return sum(self.dims)

    def loss(self, batch: MultiViewBatch, progress: float = 1.0) -> LossOutput:
        raise TypeError(
            f"model {self.name!r} is fitted in one pass over the training data (after_fit): "
            "it has no loss to minimise by gradient steps"
        )

    def observed(self, batch: MultiViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated values (missing → 0) and observed mask (bool), each (n, D)."""
        y = torch.cat([batch.values[v] for v in self.view_names], dim=-1)
        m = torch.cat([batch.masks[v] for v in self.view_names], dim=-1).bool()
        return y, m

    def split(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.view_names, x.split(self.dims, dim=-1), strict=True))

    def per_view(self, fn, *tensors: torch.Tensor) -> torch.Tensor:
        parts = [t.split(self.dims, dim=-1) for t in tensors]
        return torch.cat([fn(lik, *(p[i] for p in parts)) for i, lik in enumerate(self.likelihoods)], dim=-1)

    def after_fit(self, batches: Callable[[], object]) -> None:
        ys, ms = zip(*(self.observed(b) for b in batches()), strict=True)
        y, m = torch.cat(ys), torch.cat(ms)
        if not bool(m.any(0).all()):
            raise ValueError(f"model {self.name!r}: a column has no observed training entry")
        self.fit_rows(y, m)
        self.is_fitted.fill_(True)
        super().after_fit(batches)  # the conformal calibration, on the validation split's hidden entries

    def fit_rows(self, y: torch.Tensor, m: torch.Tensor) -> None:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not bool(self.is_fitted):
            raise RuntimeError(f"model {self.name!r} is not fitted: it is fitted by after_fit over the training data")

    def _finish(self, batch: MultiViewBatch, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.keep_observed(batch, self.split(x))

    def beyond_bounds(self, x: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
        """Draws of observed values (S, n, D) with each `bounded` column's draws on a bound replaced by
        latent values beyond it, uniform within `spread` (D,) of the bound: clamped, they are the draws
        again. A value on a bound is a censored record of any latent value past it; without these, the
        many draws and truths exactly on a bound tie the conformal scores at 1 (docs/calibration.md),
        and on digits-halves the column mean's and KNN's calibrated 90 % intervals covered 0.97–0.98."""
        bounded = torch.as_tensor(
            [lik == "bounded" for lik, d in zip(self.likelihoods, self.dims, strict=True) for _ in range(d)],
            device=x.device,
        )
        if not bool(bounded.any()):
            return x
        lo, hi = lk.BOUNDS
        u = torch.rand_like(x) * spread
        x = torch.where(bounded & (x <= lo), lo - u, x)
        return torch.where(bounded & (x >= hi), hi + u, x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the buffers' sizes follow the training data (rows held, predictors per regression): take the
        # stored shapes before the copy
        for name, buf in list(self._buffers.items()):
            stored = state_dict.get(prefix + name)
            if buf is not None and stored is not None and stored.shape != buf.shape:
                self._buffers[name] = torch.empty(stored.shape, dtype=stored.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _column_mean(y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (y * m).sum(0) / m.sum(0).clamp_min(1)


def _column_sd(y: torch.Tensor, m: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    return (((y - mean) * m).square().sum(0) / m.sum(0).clamp_min(1)).sqrt()


@register_model("mean")
class ColumnMean(OnePassModel):
    """Column mean of the observed training entries; draws from the column's empirical distribution."""

    config_class = MeanConfig

    def __init__(self, views: list[ViewInfo], config: MeanConfig | None = None) -> None:
        super().__init__(views, config or MeanConfig())
        d, q = self.data_dim, self.config.quantiles
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("atoms", torch.zeros(q, d))  # the column's observed values at levels (i + ½)/q
        self.register_buffer("spread", torch.ones(d))  # the column's standard deviation (latent values past a bound)

    def fit_rows(self, y: torch.Tensor, m: torch.Tensor) -> None:
        q = self.config.quantiles
        levels = (torch.arange(q, dtype=torch.float64) + 0.5) / q
        self.mean.copy_(_column_mean(y, m))
        self.spread.copy_(_column_sd(y, m, self.mean))
        for j in range(y.shape[1]):
            col = torch.sort(y[m[:, j], j]).values
            # the inverted-CDF quantile: the smallest observed value whose ECDF reaches the level, so an
            # atom is always an observed value (a bit, a count, a pixel on a bound)
            idx = (torch.ceil(levels * len(col)).long() - 1).clamp(0, len(col) - 1).to(col.device)
            self.atoms[:, j] = col[idx]

    @torch.no_grad()
    def impute(self, batch: MultiViewBatch, n_samples: int, censored: bool = True) -> dict[str, torch.Tensor]:
        self._check_fitted()
        q, d = self.atoms.shape
        pick = torch.randint(q, (n_samples, len(batch), d), device=self.atoms.device)
        x = self.atoms.T.reshape(-1)[torch.arange(d, device=pick.device) * q + pick]
        return self._finish(batch, x if censored else self.beyond_bounds(x, self.spread))

    @torch.no_grad()
    def impute_mean(self, batch: MultiViewBatch) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return self._finish(batch, self.mean.expand(len(batch), -1))


@register_model("knn")
class KNN(OnePassModel):
    """Mean of the k nearest training rows that observe the entry; draws are those neighbours' values."""

    config_class = KNNConfig

    def __init__(self, views: list[ViewInfo], config: KNNConfig | None = None) -> None:
        super().__init__(views, config or KNNConfig())
        d = self.data_dim
        self.register_buffer("rows", torch.zeros(0, d))  # the training rows (missing → 0)
        self.register_buffer("rows_observed", torch.zeros(0, d, dtype=torch.bool))
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("spread", torch.ones(d))  # the column's standard deviation (latent values past a bound)

    def fit_rows(self, y: torch.Tensor, m: torch.Tensor) -> None:
        self.rows, self.rows_observed = y.clone(), m.clone()
        self.mean.copy_(_column_mean(y, m))
        self.spread.copy_(_column_sd(y, m, self.mean))

    def training_rows_held(self) -> dict:
        n, d = self.rows.shape
        return {"rows": int(n), "columns": int(d), "bytes": int(n * d * (self.rows.element_size() + 1))}

    def _features(self, y: torch.Tensor) -> torch.Tensor:
        """The distance's features: counts on a log scale (as the deep models' encoders see them)."""

        def feature(lik: str, part: torch.Tensor) -> torch.Tensor:
            return torch.log1p(part.clamp_min(0)) if lik in lk.COUNT_LIKELIHOODS else part

        return self.per_view(feature, y)

    def distances(self, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Squared nan-Euclidean distances (q, N) to the training rows: D / n_common · Σ_common (x − x')²
        over the features both observe (scikit-learn's `nan_euclidean_distances`); +∞ with none in common."""
        a, b = self._features(y) * m, self._features(self.rows) * self.rows_observed
        mf, bf = m.to(a.dtype), self.rows_observed.to(a.dtype)
        sq = (a * a) @ bf.T + mf @ (b * b).T - 2 * a @ b.T
        common = mf @ bf.T
        d2 = sq.clamp_min(0) * (y.shape[1] / common.clamp_min(1))
        return torch.where(common > 0, d2, torch.full_like(d2, math.inf))

    def donors(self, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Per query row and column, the training rows of its k nearest donors (q, k, D), nearest first
        (ties: lower row first), −1 where fewer than k training rows share a feature with it and
        observe the column."""
        k, (n_train, d) = self.config.k, self.rows.shape
        d2 = self.distances(y, m)
        order = torch.sort(d2, dim=1, stable=True).indices  # (q, N)
        reach = torch.isfinite(torch.gather(d2, 1, order))
        # the first k observing rows are found among the nearest `width` rows; where a column has fewer
        # observing rows there, it is searched over all rows below
        width = min(n_train, max(4 * k, k + 32))
        cand = order[:, :width]
        obs = self.rows_observed[cand] & reach[:, :width, None]  # (q, width, D)
        rank = obs.long().cumsum(1)
        out = torch.full((len(y), k, d), -1, dtype=torch.long, device=y.device)
        qi, ci, di = torch.nonzero(obs & (rank <= k), as_tuple=True)
        out[qi, rank[qi, ci, di] - 1, di] = cand[qi, ci]
        short = rank[:, -1, :] < k
        if width < n_train and bool(short.any()):
            for j in torch.nonzero(short.any(0)).flatten().tolist():
                r = torch.nonzero(short[:, j]).flatten()
                obs_j = self.rows_observed[order[r], j] & reach[r]  # (r, N)
                rank_j = obs_j.long().cumsum(1)
                ri, ci = torch.nonzero(obs_j & (rank_j <= k), as_tuple=True)
                out[r[ri], rank_j[ri, ci] - 1, j] = order[r[ri], ci]
        return out

    def _chunks(self, n: int, d: int) -> list[slice]:
        width = min(len(self.rows), max(4 * self.config.k, self.config.k + 32))
        size = max(1, min(CHUNK_ELEMENTS // max(1, width * d), CHUNK_ELEMENTS // max(1, len(self.rows))))
        return [slice(i, min(n, i + size)) for i in range(0, n, size)]

    def _donor_values(self, batch: MultiViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The donors' values (q, k, D) and how many donors each entry has (q, D)."""
        self._check_fitted()
        y, m = self.observed(batch)
        vals, counts = [], []
        cols = torch.arange(y.shape[1], device=y.device)
        for rows in self._chunks(len(y), y.shape[1]):
            idx = self.donors(y[rows], m[rows])
            valid = idx >= 0
            vals.append(torch.where(valid, self.rows[idx.clamp_min(0), cols], torch.zeros((), dtype=y.dtype)))
            counts.append(valid.sum(1))
        return torch.cat(vals), torch.cat(counts)

    @torch.no_grad()
    def impute_mean(self, batch: MultiViewBatch) -> dict[str, torch.Tensor]:
        vals, counts = self._donor_values(batch)
        point = vals.sum(1) / counts.clamp_min(1)
        # no donor at all (no training row observing the column shares a feature with the row): the
        # column mean, as scikit-learn's KNNImputer does
        return self._finish(batch, torch.where(counts > 0, point, self.mean.expand_as(point)))

    @torch.no_grad()
    def impute(self, batch: MultiViewBatch, n_samples: int, censored: bool = True) -> dict[str, torch.Tensor]:
        """Each draw takes, per entry, one of its k donors uniformly at random. Draw s of a row uses
        the same uniform u_s for all its columns (donor rank ⌊u_s · k⌋): where the columns share their
        donors, a draw is one neighbour's row (a hot deck, keeping the columns' dependence). The u_s of
        a row are stratified over [0, 1), so that every donor appears about equally often."""
        vals, counts = self._donor_values(batch)
        q, d = counts.shape
        strata = torch.argsort(torch.rand(n_samples, q, device=vals.device), dim=0).to(vals.dtype)
        u = (strata + torch.rand(n_samples, q, device=vals.device)) / n_samples  # (S, q)
        rank = (u[:, :, None] * counts.clamp_min(1)).long().clamp_max(counts.clamp_min(1) - 1)  # (S, q, D)
        x = torch.gather(vals.unsqueeze(0).expand(n_samples, -1, -1, -1), 2, rank.unsqueeze(2)).squeeze(2)
        none = counts == 0
        if bool(none.any()):  # no donor: the column's observed training values, at random
            for j in torch.nonzero(none.any(0)).flatten().tolist():
                pool = self.rows[self.rows_observed[:, j], j]
                r = torch.nonzero(none[:, j]).flatten()
                x[:, r, j] = pool[torch.randint(len(pool), (n_samples, len(r)), device=pool.device)]
        return self._finish(batch, x if censored else self.beyond_bounds(x, self.spread))


@register_model("mice")
class MICE(OnePassModel):
    """Chained Bayesian ridge regressions (scikit-learn's IterativeImputer); draws are Gibbs chains."""

    config_class = MICEConfig

    def __init__(self, views: list[ViewInfo], config: MICEConfig | None = None) -> None:
        super().__init__(views, config or MICEConfig())
        d = self.data_dim
        p = max(0, d - 1) if self.config.n_nearest_features is None else min(self.config.n_nearest_features, d - 1)
        self.register_buffer("initial", torch.zeros(d))  # the column means the chains start from
        self.register_buffer("order", torch.arange(d))  # the columns in the order the regressions visit them
        self.register_buffer("predictors", torch.zeros(d, p, dtype=torch.long))  # per column, its predictors
        self.register_buffer("coef", torch.zeros(d, p))  # posterior mean of the coefficients
        self.register_buffer("coef_chol", torch.zeros(d, p, p))  # Cholesky factor of their posterior covariance
        self.register_buffer("x_offset", torch.zeros(d, p))  # the predictors' training means (centring)
        self.register_buffer("y_offset", torch.zeros(d))  # the column's fitted value at the predictors' means
        self.register_buffer("noise_var", torch.ones(d))  # 1 / α: the regression's noise variance

    def fit_rows(self, y: torch.Tensor, m: torch.Tensor) -> None:
        # scikit-learn fits; its estimators are not stored (no pickles): the final round's posterior of
        # each regression is copied into the buffers and the chains are run by hand, in torch
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer
        from sklearn.linear_model import BayesianRidge

        c = self.config
        x = np.where(m.cpu().numpy(), y.detach().cpu().double().numpy(), np.nan)
        d = x.shape[1]
        seed = int(torch.randint(2**31 - 1, (1,)))  # the fit's torch seed decides scikit-learn's too
        imp = IterativeImputer(
            estimator=BayesianRidge(),
            sample_posterior=True,
            max_iter=c.n_iter,
            n_nearest_features=c.n_nearest_features,
            random_state=seed,
            skip_complete=False,
        ).fit(x)
        last = imp.imputation_sequence_[-d:]
        if sorted(t.feat_idx for t in last) != list(range(d)):
            raise RuntimeError("IterativeImputer's final round does not visit every column once")
        dev, dt = self.coef.device, self.coef.dtype
        p = self.coef.shape[1]
        self.initial.copy_(torch.as_tensor(imp.initial_imputer_.statistics_, dtype=dt))
        self.order.copy_(torch.as_tensor([t.feat_idx for t in last]))
        for t in last:
            j, est = t.feat_idx, t.estimator
            if len(t.neighbor_feat_idx) != p:
                raise RuntimeError(f"column {j}: {len(t.neighbor_feat_idx)} predictors, expected {p}")
            cov = np.asarray(est.sigma_, dtype=np.float64)
            cov = (cov + cov.T) / 2 + 1e-12 * np.eye(p) * max(1.0, float(np.trace(cov)) / max(p, 1))
            w, v = np.linalg.eigh(cov)  # positive semi-definite: a square root that never fails
            chol = torch.linalg.qr(torch.as_tensor((v * np.sqrt(np.clip(w, 0, None))).T)).R.T  # L Lᵀ = cov
            coef = np.asarray(est.coef_, dtype=np.float64)
            self.predictors[j] = torch.as_tensor(np.asarray(t.neighbor_feat_idx), device=dev)
            self.coef[j] = torch.as_tensor(coef, dtype=dt, device=dev)
            self.coef_chol[j] = chol.to(dt).to(dev)
            self.x_offset[j] = torch.as_tensor(est.X_offset_, dtype=dt, device=dev)
            self.y_offset[j] = float(est.intercept_ + np.dot(est.X_offset_, coef))
            self.noise_var[j] = 1.0 / float(est.alpha_)

    def _link(self) -> list[str]:
        return [lik for lik, d in zip(self.likelihoods, self.dims, strict=True) for _ in range(d)]

    def chains(self, batch: MultiViewBatch, n_samples: int, draw: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Gibbs chains (S, n, D) through the final round's regressions, from the column means, for
        `sweeps` sweeps. With `draw`, each sweep and column draws the coefficients β ~ N(coef, Σ) per
        chain and the missing entries y = (x − x̄)·β + ȳ + ε, ε ~ N(0, 1/α), observed through the
        column's likelihood (the entry's predictive law is scikit-learn's `predict(return_std=True)`:
        N(x·coef + b, (x − x̄)ᵀ Σ (x − x̄) + 1/α)); else (S = 1) the conditional means, iterated.
        Returns the chains and, for the last sweep, the latent draws (the values before the likelihood's
        observation) of each missing entry."""
        self._check_fitted()
        y, m = self.observed(batch)
        links = self._link()
        s = n_samples if draw else 1
        x = torch.where(m, y, self.initial).unsqueeze(0).expand(s, -1, -1).clone()
        latent = x.clone()
        missing = ~m
        cols = [j for j in self.order.tolist() if bool(missing[:, j].any())]
        for sweep in range(self.config.sweeps):
            for j in cols:
                nb = self.predictors[j]
                centred = x[:, :, nb] - self.x_offset[j]  # (S, n, p)
                if draw:
                    beta = self.coef[j] + torch.randn(s, len(nb), dtype=x.dtype, device=x.device) @ self.coef_chol[j].T
                    mu = torch.einsum("snp,sp->sn", centred, beta) + self.y_offset[j]
                    z = mu + self.noise_var[j].sqrt() * torch.randn_like(mu)
                    obs = lk.link_sample(links[j], z)
                else:
                    z = centred @ self.coef[j] + self.y_offset[j]
                    obs = z
                miss = missing[:, j]
                x[:, :, j] = torch.where(miss, obs, x[:, :, j])
                if sweep == self.config.sweeps - 1:
                    latent[:, :, j] = torch.where(miss, z, latent[:, :, j])
        return x, latent

    @torch.no_grad()
    def impute(self, batch: MultiViewBatch, n_samples: int, censored: bool = True) -> dict[str, torch.Tensor]:
        x, latent = self.chains(batch, n_samples)
        if not censored:  # a bounded view's latent value before the clamp (what the calibration scores)
            bounded = torch.as_tensor([lik == "bounded" for lik in self._link()], device=x.device)
            x = torch.where(bounded, latent, x)
        return self._finish(batch, x)

    @torch.no_grad()
    def impute_mean(self, batch: MultiViewBatch) -> dict[str, torch.Tensor]:
        """The conditional means iterated (deterministic), observed through each view's likelihood's mean
        with the predictive variance (x − x̄)ᵀ Σ (x − x̄) + 1/α."""
        x, _ = self.chains(batch, 1, draw=False)
        x = x[0]
        var = self.noise_var.expand_as(x).clone()
        for j, lik in enumerate(self._link()):
            if lik in ("bounded", "binary"):  # the only links whose mean needs the variance
                centred = x[:, self.predictors[j]] - self.x_offset[j]
                var[:, j] += (centred @ self.coef_chol[j]).square().sum(-1)
        return self._finish(batch, self.per_view(lk.link_mean, x, var.log()))
