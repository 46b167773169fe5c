"""Multi-view data in memory: validation, alignment, splits and per-view scaling."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..batch import MultiViewBatch
from ..likelihoods import DEFAULT_SCALING, LIKELIHOODS, RAW_LIKELIHOODS, check_values, infer_likelihood

SCALINGS = ("standard", "none", "log1p")
COLUMN_SEP = ":"


def _as_float_array(view: str, value, columns: list[str]) -> np.ndarray:
    """A float64 (n, d) array; a non-numeric column is a `ValueError` naming view and column."""
    if isinstance(value, pd.DataFrame):
        for c in value.columns:
            if not pd.api.types.is_numeric_dtype(value[c]):
                try:
                    pd.to_numeric(value[c], errors="raise")
                except (ValueError, TypeError) as err:
                    raise ValueError(f"view {view!r}, column {c!r}: non-numeric value(s) ({err})") from None
        arr = value.apply(pd.to_numeric).to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        arr = np.asarray(value)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"view {view!r}: expected a 2-d array (samples × features), got shape {arr.shape}")
        if arr.dtype.kind not in "fiub":
            for j in range(arr.shape[1]):
                try:
                    arr[:, j].astype(np.float64)
                except (ValueError, TypeError):
                    raise ValueError(f"view {view!r}, column {columns[j]!r}: non-numeric value(s)") from None
        arr = arr.astype(np.float64)
    inf = np.isinf(arr)
    if inf.any():
        j = int(np.argwhere(inf.any(0))[0, 0])
        raise ValueError(
            f"view {view!r}, column {columns[j]!r}: ±Inf in {int(inf[:, j].sum())} row(s); use NaN for missing"
        )
    return arr


def _columns_of(view: str, value) -> list[str]:
    if isinstance(value, pd.DataFrame):
        return [str(c) for c in value.columns]
    arr = np.asarray(value)
    d = 1 if arr.ndim == 1 else arr.shape[1] if arr.ndim == 2 else 0
    return [f"{view}_{j}" for j in range(d)]


class MultiViewData:
    """Views of the same samples: dict view → (n, d_v) float array with NaN for missing.

    Rows are aligned across views: DataFrames with different indices are aligned on the index
    (the same set of ids is required); arrays must have the same number of rows. `obs` holds
    per-sample annotations (labels, known latents), kept aligned through `subset` and `split`.
    """

    def __init__(
        self,
        views: Mapping[str, np.ndarray | pd.DataFrame],
        likelihoods: Mapping[str, str] | None = None,
        index: np.ndarray | list | None = None,
        columns: Mapping[str, list[str]] | None = None,
        allow_empty_rows: bool = True,
        obs: pd.DataFrame | None = None,
        check_likelihoods: bool = True,
    ) -> None:
        if isinstance(views, MultiViewData):
            views = views.views
        if not isinstance(views, Mapping) or not views:
            raise ValueError("views must be a non-empty dict: view name → array or DataFrame")
        views = dict(views)
        for v in views:
            if not isinstance(v, str) or not v or COLUMN_SEP in v:
                raise ValueError(f"view name {v!r} must be a non-empty string without {COLUMN_SEP!r}")
        frames = {v: x for v, x in views.items() if isinstance(x, pd.DataFrame)}
        if frames and index is None:
            first = next(iter(frames))
            ref = frames[first].index
            if ref.has_duplicates:
                raise ValueError(f"view {first!r}: duplicate sample ids in the index")
            for v, f in frames.items():
                if f.index.has_duplicates:
                    raise ValueError(f"view {v!r}: duplicate sample ids in the index")
                if len(f) != len(ref) or not f.index.isin(ref).all():
                    raise ValueError(f"view {v!r}: its {len(f)} sample ids do not match view {first!r}'s {len(ref)}")
                if not f.index.equals(ref):
                    views[v] = f.loc[ref]
            index = ref.to_numpy()
        rows = {
            v: (len(x) if isinstance(x, pd.DataFrame) else np.shape(x)[0] if np.ndim(x) else 0)
            for v, x in views.items()
        }
        if len(set(rows.values())) > 1:
            raise ValueError(f"views have different numbers of rows: {rows}")
        self.columns: dict[str, list[str]] = {
            v: list(columns[v]) if columns and v in columns else _columns_of(v, x) for v, x in views.items()
        }
        self.views: dict[str, np.ndarray] = {v: _as_float_array(v, x, self.columns[v]) for v, x in views.items()}
        for v, a in self.views.items():
            if a.shape[1] == 0:
                raise ValueError(f"view {v!r} has no columns")
            if len(self.columns[v]) != a.shape[1]:
                raise ValueError(f"view {v!r}: {len(self.columns[v])} column names for {a.shape[1]} columns")
        n = next(iter(rows.values()))
        self.index = np.arange(n) if index is None else np.asarray(index)
        if len(self.index) != n:
            raise ValueError(f"index has {len(self.index)} ids for {n} rows")
        if obs is not None and len(obs) != n:
            raise ValueError(f"obs has {len(obs)} rows for {n} samples")
        self.obs = None if obs is None else obs.reset_index(drop=True)
        likelihoods = dict(likelihoods or {})
        unknown = sorted(set(likelihoods) - set(self.views))
        if unknown:
            raise ValueError(f"likelihoods name unknown view(s) {unknown}; views are {self.view_names}")
        for v, lk in likelihoods.items():
            if lk not in LIKELIHOODS:
                raise ValueError(f"view {v!r}: unknown likelihood {lk!r}; choose one of {LIKELIHOODS}")
            if check_likelihoods and lk:
                check_values(v, self.columns[v], self.views[v], lk)
        self.likelihoods = {v: likelihoods.get(v) or infer_likelihood(a) for v, a in self.views.items()}
        if not allow_empty_rows:
            self.check_no_empty_rows()

    def check_no_empty_rows(self) -> None:
        """A sample with every view missing carries nothing to learn from: a `ValueError` naming it."""
        empty = ~np.any([m.any(1) for m in self.masks.values()], axis=0)
        if empty.any():
            ids = self.index[empty][:5].tolist()
            raise ValueError(f"{int(empty.sum())} sample(s) have every view missing (ids {ids}...); drop them")

    # -- shape
    @property
    def view_names(self) -> list[str]:
        return list(self.views)

    @property
    def n_samples(self) -> int:
        return len(self.index)

    def __len__(self) -> int:
        return self.n_samples

    @property
    def dims(self) -> dict[str, int]:
        return {v: a.shape[1] for v, a in self.views.items()}

    @property
    def masks(self) -> dict[str, np.ndarray]:
        """Observed masks (True = observed)."""
        return {v: ~np.isnan(a) for v, a in self.views.items()}

    def missing_rate(self) -> dict[str, float]:
        return {v: float(np.isnan(a).mean()) for v, a in self.views.items()}

    def __repr__(self) -> str:
        desc = ", ".join(f"{v}: {a.shape[1]} {self.likelihoods[v]}" for v, a in self.views.items())
        return f"MultiViewData(n={self.n_samples}; {desc})"

    # -- rows
    def subset(self, rows) -> MultiViewData:
        rows = np.asarray(rows)
        return MultiViewData(
            {v: a[rows] for v, a in self.views.items()},
            likelihoods=self.likelihoods,
            index=self.index[rows],
            columns=self.columns,
            obs=None if self.obs is None else self.obs.iloc[rows],
            check_likelihoods=False,
        )

    def split(self, test_frac: float = 0.2, seed: int = 0) -> tuple[MultiViewData, MultiViewData]:
        """A random (train, test) split of the samples."""
        if not 0 < test_frac < 1:
            raise ValueError(f"test_frac must lie in (0, 1), got {test_frac}")
        perm = np.random.default_rng(seed).permutation(self.n_samples)
        n_test = max(1, int(round(test_frac * self.n_samples)))
        return self.subset(np.sort(perm[n_test:])), self.subset(np.sort(perm[:n_test]))

    def with_views(self, views: Mapping[str, np.ndarray]) -> MultiViewData:
        """The same samples, columns and likelihoods with new values (e.g. corrupted)."""
        return MultiViewData(
            views,
            likelihoods=self.likelihoods,
            index=self.index,
            columns=self.columns,
            obs=self.obs,
            check_likelihoods=False,
        )

    def copy(self) -> MultiViewData:
        return self.with_views({v: a.copy() for v, a in self.views.items()})

    # -- wide frames (view-prefixed columns "view:column")
    def to_frame(self) -> pd.DataFrame:
        parts = [
            pd.DataFrame(a, columns=[f"{v}{COLUMN_SEP}{c}" for c in self.columns[v]], index=self.index)
            for v, a in self.views.items()
        ]
        return pd.concat(parts, axis=1)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, likelihoods: Mapping[str, str] | None = None) -> MultiViewData:
        """Split a wide frame whose columns are named `view:column`."""
        groups: dict[str, list] = {}
        for c in frame.columns:
            if not isinstance(c, str) or COLUMN_SEP not in c:
                raise ValueError(f"column {c!r} is not named 'view{COLUMN_SEP}feature'")
            groups.setdefault(c.split(COLUMN_SEP, 1)[0], []).append(c)
        views = {}
        columns = {}
        for v, cols in groups.items():
            views[v] = frame[cols].set_axis([c.split(COLUMN_SEP, 1)[1] for c in cols], axis=1)
            columns[v] = [c.split(COLUMN_SEP, 1)[1] for c in cols]
        return cls(views, likelihoods=likelihoods, columns=columns)


def as_multiview(views, likelihoods: Mapping[str, str] | None = None) -> MultiViewData:
    if isinstance(views, MultiViewData):
        if likelihoods:
            return MultiViewData(
                views.views, {**views.likelihoods, **likelihoods}, views.index, views.columns, obs=views.obs
            )
        return views
    if isinstance(views, pd.DataFrame):
        return MultiViewData.from_frame(views, likelihoods)
    return MultiViewData(views, likelihoods=likelihoods)


# ----------------------------------------------------------------------------- scaling

MAX_ABS_VALUE = 1e100  # sums of squares (variances, Gaussian log-likelihoods) of larger values overflow float64


def _check_trainable(view: str, a: np.ndarray, columns: list[str]) -> None:
    """Training data every column of which can be learnt: some observed value, and values whose
    scaling and likelihood stay finite. Either failure is a `ValueError` naming view and column."""
    if a.shape[0] == 0:
        raise ValueError(f"view {view!r}: no training samples")
    empty = np.isnan(a).all(0)
    if empty.any():
        names = [columns[j] for j in np.flatnonzero(empty)[:5]]
        raise ValueError(
            f"view {view!r}, column(s) {names}: no observed value in the training data, so nothing can be "
            "learnt about them; drop the column(s) or add samples where they are measured"
        )
    check_magnitude(view, a, columns)


def check_magnitude(view: str, a: np.ndarray, columns: list[str]) -> None:
    """Values so large that scaling or a likelihood overflows are a `ValueError` naming view and column."""
    big = np.abs(np.nan_to_num(a)) > MAX_ABS_VALUE
    if big.any():
        j = int(np.argwhere(big.any(0))[0, 0])
        raise ValueError(
            f"view {view!r}, column {columns[j]!r}: values up to {np.nanmax(np.abs(a[:, j])):.3g} overflow when "
            f"scaled (|value| must stay below {MAX_ABS_VALUE:.0e}); rescale the column (e.g. log) first"
        )


@dataclass
class ViewScaler:
    """Per-column scaling of one view fitted on observed entries; `none` leaves values as they are."""

    kind: str = "standard"
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCALINGS:
            raise ValueError(f"unknown scaling {self.kind!r}; choose one of {SCALINGS}")

    def fit(self, a: np.ndarray) -> ViewScaler:
        if self.kind == "none":
            return self
        x = np.log1p(np.clip(a, 0, None)) if self.kind == "log1p" else a
        obs = ~np.isnan(x)
        cnt = obs.sum(0)
        mean = np.where(cnt > 0, np.nansum(x, 0) / np.maximum(cnt, 1), 0.0)
        var = np.where(cnt > 1, np.nansum((x - mean) ** 2, 0) / np.maximum(cnt - 1, 1), 1.0)
        std = np.sqrt(var)
        self.mean, self.std = mean, np.where(std > 1e-8, std, 1.0)
        return self

    def transform(self, a: np.ndarray) -> np.ndarray:
        if self.kind == "none":
            return a
        x = np.log1p(np.clip(a, 0, None)) if self.kind == "log1p" else a
        return (x - self.mean) / self.std

    def inverse(self, z: np.ndarray) -> np.ndarray:
        if self.kind == "none":
            return z
        x = z * self.std + self.mean
        return np.expm1(x).clip(min=0) if self.kind == "log1p" else x

    def state(self) -> dict:
        return {
            "kind": self.kind,
            "mean": None if self.mean is None else self.mean.tolist(),
            "std": None if self.std is None else self.std.tolist(),
        }

    @classmethod
    def from_state(cls, s: dict) -> ViewScaler:
        def arr(x):
            return None if x is None else np.asarray(x, dtype=np.float64)

        return cls(s["kind"], arr(s["mean"]), arr(s["std"]))


@dataclass
class ViewSchema:
    """The views a model was trained on: columns, likelihood and fitted scaling of each."""

    columns: dict[str, list[str]]
    likelihoods: dict[str, str]
    scalers: dict[str, ViewScaler] = field(default_factory=dict)

    @classmethod
    def fit(cls, data: MultiViewData, scalings: Mapping[str, str] | None = None) -> ViewSchema:
        scalings = dict(scalings or {})
        unknown = sorted(set(scalings) - set(data.views))
        if unknown:
            raise ValueError(f"scalings name unknown view(s) {unknown}; views are {data.view_names}")
        scalers = {}
        for v, a in data.views.items():
            kind = scalings.get(v) or DEFAULT_SCALING[data.likelihoods[v]]
            if kind != "none" and data.likelihoods[v] in RAW_LIKELIHOODS:
                raise ValueError(
                    f"view {v!r}: scaling {kind!r} does not fit likelihood {data.likelihoods[v]!r}, "
                    "which models raw values; use scaling 'none' or a gaussian likelihood"
                )
            _check_trainable(v, a, data.columns[v])
            scalers[v] = ViewScaler(kind).fit(a)
        return cls(dict(data.columns), dict(data.likelihoods), scalers)

    @property
    def view_names(self) -> list[str]:
        return list(self.columns)

    @property
    def dims(self) -> dict[str, int]:
        return {v: len(c) for v, c in self.columns.items()}

    def check(self, views, likelihoods_given: bool = False) -> MultiViewData:
        """Validate new data against the schema. A view left out is wholly missing."""
        if isinstance(views, pd.DataFrame):
            views = MultiViewData.from_frame(views)
        if isinstance(views, MultiViewData):
            data_views, cols, index = dict(views.views), dict(views.columns), views.index
        else:
            if not isinstance(views, Mapping) or not views:
                raise ValueError("views must be a non-empty dict: view name → array or DataFrame")
            probe = MultiViewData(views)
            data_views, cols, index = dict(probe.views), dict(probe.columns), probe.index
        unknown = sorted(set(data_views) - set(self.columns))
        if unknown:
            raise ValueError(f"unknown view(s) {unknown}; the model was trained on {self.view_names}")
        n = len(index)
        for v, expected in self.columns.items():
            if v not in data_views:
                data_views[v] = np.full((n, len(expected)), np.nan)
                continue
            a = data_views[v]
            if a.shape[1] != len(expected):
                raise ValueError(f"view {v!r} has {a.shape[1]} columns; the model was trained on {len(expected)}")
            given = isinstance(views, MultiViewData) or isinstance(
                views.get(v) if isinstance(views, Mapping) else None, pd.DataFrame
            )
            positional = [f"{v}_{j}" for j in range(len(expected))]  # names given to bare arrays
            if given and cols[v] != expected and positional not in (cols[v], expected):
                missing = [c for c in expected if c not in cols[v]]
                if missing or len(set(cols[v])) != len(cols[v]):
                    raise ValueError(f"view {v!r}: columns {missing[:5]} are missing; got {cols[v][:5]}...")
                order = [cols[v].index(c) for c in expected]
                data_views[v] = a[:, order]
        for v in self.columns:
            check_magnitude(v, data_views[v], self.columns[v])
        return MultiViewData(
            {v: data_views[v] for v in self.columns},
            likelihoods=self.likelihoods,
            index=index,
            columns=self.columns,
            check_likelihoods=False,
        )

    def to_batch(self, data: MultiViewData) -> MultiViewBatch:
        scaled = {v: self.scalers[v].transform(data.views[v]) for v in self.columns}
        return MultiViewBatch.from_arrays(scaled, index=data.index)

    def inverse(self, scaled: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {v: self.scalers[v].inverse(np.asarray(a, dtype=np.float64)) for v, a in scaled.items()}

    def state(self) -> dict:
        return {
            "columns": self.columns,
            "likelihoods": self.likelihoods,
            "scalers": {v: s.state() for v, s in self.scalers.items()},
        }

    @classmethod
    def from_state(cls, s: dict) -> ViewSchema:
        return cls(
            {v: list(c) for v, c in s["columns"].items()},
            dict(s["likelihoods"]),
            {v: ViewScaler.from_state(x) for v, x in s["scalers"].items()},
        )
