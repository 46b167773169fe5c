"""Classic imputers behind the same `fit` / `transform` interface as `MultiViewImputer`."""

from __future__ import annotations

import numpy as np

from .data.multiview import MultiViewData, as_multiview


class SklearnImputer:
    """A scikit-learn imputer applied to the concatenated views; results split back per view.

    With `n_draws` > 0 the estimator must accept `random_state` and `sample_posterior` (MICE):
    `n_draws` copies are fitted with different seeds and `transform` averages them;
    `MultipleSklearnImputer.sample` returns their completions (multiple imputation).
    """

    def __init__(self, estimator, name: str | None = None, n_draws: int = 0) -> None:
        self.estimator = estimator
        self.name = name or type(estimator).__name__
        self.n_draws = n_draws
        self.dims_: dict[str, int] | None = None
        self.draws_: list = []

    def _wide(self, views) -> tuple[MultiViewData, np.ndarray]:
        data = as_multiview(views)
        if self.dims_ is not None and data.dims != self.dims_:
            raise ValueError(f"views {data.dims} differ from the fitted {self.dims_}")
        names = list(self.dims_) if self.dims_ is not None else data.view_names
        return data, np.concatenate([data.views[v] for v in names], axis=1)

    def fit(self, views) -> SklearnImputer:
        data, x = self._wide(views)
        self.dims_ = data.dims
        if self.n_draws:
            from sklearn.base import clone

            self.draws_ = [
                clone(self.estimator).set_params(random_state=k, sample_posterior=True).fit(x)
                for k in range(self.n_draws)
            ]
        else:
            self.estimator.fit(x)
        return self

    def _split(self, data: MultiViewData, x: np.ndarray, filled: np.ndarray) -> dict[str, np.ndarray]:
        if filled.shape != x.shape:
            raise ValueError(
                f"{self.name} dropped columns that were never observed in training ({x.shape[1]} → {filled.shape[1]})"
            )
        filled = np.where(np.isnan(x), filled, x)
        out, start = {}, 0
        for v in self.dims_:
            d = data.dims[v]
            out[v] = filled[:, start : start + d]
            start += d
        return out

    def transform(self, views) -> dict[str, np.ndarray]:
        data, x = self._wide(views)
        if self.n_draws:
            filled = np.mean([est.transform(x) for est in self.draws_], axis=0)
        else:
            filled = self.estimator.transform(x)
        return self._split(data, x, filled)


class MultipleSklearnImputer(SklearnImputer):
    """`SklearnImputer` with `n_draws` ≥ 1 posterior-sampled copies, and so a `sample` method."""

    def __init__(self, estimator, name: str | None = None, n_draws: int = 10) -> None:
        if n_draws < 1:
            raise ValueError(f"n_draws must be ≥ 1, got {n_draws}")
        super().__init__(estimator, name, n_draws)

    def sample(self, views, n_samples: int = 0) -> dict[str, np.ndarray]:
        """The `n_draws` completions, dict view → (n_draws, n, d_v); `n_samples` is not used."""
        data, x = self._wide(views)
        parts = [self._split(data, x, est.transform(x)) for est in self.draws_]
        return {v: np.stack([p[v] for p in parts]) for v in self.dims_}


def mean_imputer() -> SklearnImputer:
    """Column mean of the observed training entries."""
    from sklearn.impute import SimpleImputer

    return SklearnImputer(SimpleImputer(strategy="mean", keep_empty_features=True), "column-mean")


def knn_imputer(k: int = 10) -> SklearnImputer:
    """Mean of the k nearest training rows on the jointly observed features."""
    from sklearn.impute import KNNImputer

    return SklearnImputer(KNNImputer(n_neighbors=k, keep_empty_features=True), f"knn-{k}")


def mice_imputer(n_draws: int = 10, max_iter: int = 10) -> SklearnImputer:
    """MICE: chained Bayesian ridge regressions; `n_draws` posterior-sampled completions."""
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    est = IterativeImputer(max_iter=max_iter, keep_empty_features=True)
    return MultipleSklearnImputer(est, "mice", n_draws=n_draws)


def missforest_imputer(n_estimators: int = 50, max_iter: int = 5, seed: int = 0) -> SklearnImputer:
    """MissForest-style: chained random-forest regressions (Stekhoven & Bühlmann 2012)."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    forest = RandomForestRegressor(n_estimators=n_estimators, max_features="sqrt", n_jobs=1, random_state=seed)
    est = IterativeImputer(estimator=forest, max_iter=max_iter, random_state=seed, keep_empty_features=True)
    return SklearnImputer(est, "missforest")


BASELINES = {"column-mean": mean_imputer, "knn": knn_imputer, "mice": mice_imputer, "missforest": missforest_imputer}
