"""Classic imputers behind the same `fit` / `transform` interface as `MultiViewImputer`."""

from __future__ import annotations

import numpy as np

from .data.multiview import MultiViewData, as_multiview


class SklearnImputer:
    """A scikit-learn imputer applied to the concatenated views; results split back per view."""

    def __init__(self, estimator, name: str | None = None) -> None:
        self.estimator = estimator
        self.name = name or type(estimator).__name__
        self.dims_: dict[str, int] | None = None

    def _wide(self, views) -> tuple[MultiViewData, np.ndarray]:
        data = as_multiview(views)
        if self.dims_ is not None and data.dims != self.dims_:
            raise ValueError(f"views {data.dims} differ from the fitted {self.dims_}")
        names = list(self.dims_) if self.dims_ is not None else data.view_names
        return data, np.concatenate([data.views[v] for v in names], axis=1)

    def fit(self, views) -> SklearnImputer:
        data, x = self._wide(views)
        self.dims_ = data.dims
        self.estimator.fit(x)
        return self

    def transform(self, views) -> dict[str, np.ndarray]:
        data, x = self._wide(views)
        filled = self.estimator.transform(x)
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


def mean_imputer() -> SklearnImputer:
    """Column mean of the observed training entries."""
    from sklearn.impute import SimpleImputer

    return SklearnImputer(SimpleImputer(strategy="mean", keep_empty_features=True), "column-mean")
