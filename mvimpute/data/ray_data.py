"""Multi-view data on Ray Data: streamed reading, id alignment, scaling statistics, tensor batches.

Per-view tables are aligned with a full outer join on the id column (Ray Data's hash-shuffle
join): a sample missing from a view's table gets that whole view missing. AnnData views (.h5ad
files, MuData modalities) enter the same join as Ray Datasets of row ranges read by tasks
(`omics.read_view`). The aligned dataset has the id column (as strings) and one float column
per feature, named `view:column`. Scaling statistics (and, where not given, the likelihood) come
from one streaming pass over the training rows: each Ray Data task turns a batch into its
per-column moments and the driver merges them, so nothing but moments reaches the driver and no
process holds more than a batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..batch import MultiViewBatch
from ..likelihoods import infer_from_stats
from . import omics
from .multiview import COLUMN_SEP, DEFAULT_SCALING, MultiViewData, ViewScaler, ViewSchema
from .spec import COUNT_LIKELIHOODS, DatasetSpec, ResolvedSpec, ViewSource, validate_spec

DEFAULT_ID = "sample_id"


def _ray_data():
    import ray.data

    return ray.data


def qualified(view: str, columns: list[str]) -> list[str]:
    return [f"{view}{COLUMN_SEP}{c}" for c in columns]


def is_validation(ids: Iterable, val_frac: float, seed: int) -> np.ndarray:
    """Stable per-id split: True for the ~`val_frac` share of ids held out for validation.

    A hash of (seed, id) rather than a permutation, so that each block decides for its own rows
    while streaming and every worker (and a later resume) agrees."""
    ids = list(ids)
    if val_frac <= 0 or not ids:
        return np.zeros(len(ids), dtype=bool)
    h = np.fromiter(
        (int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "little") for i in ids),
        dtype=np.uint64,
        count=len(ids),
    )
    return (h.astype(np.float64) / 2.0**64) < val_frac


# ----------------------------------------------------------------------------- block functions


class _Normalise:
    """Arrow block → id as string, features as float64 (null → NaN), named `view:column`."""

    def __init__(self, id_column: str, renames: dict[str, str]) -> None:
        self.id_column, self.renames = id_column, renames

    def __call__(self, table):
        import pyarrow as pa
        import pyarrow.compute as pc

        arrays, names = [pc.cast(table.column(self.id_column), pa.string())], [self.id_column]
        for src, dst in self.renames.items():
            col = pc.cast(table.column(src), pa.float64())
            arrays.append(pc.fill_null(col, float("nan")))
            names.append(dst)
        return pa.Table.from_arrays(arrays, names=names)


class _SplitFilter:
    def __init__(self, id_column: str, val_frac: float, seed: int, keep_validation: bool) -> None:
        self.id_column, self.val_frac, self.seed, self.keep = id_column, val_frac, seed, keep_validation

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        val = is_validation(df[self.id_column], self.val_frac, self.seed)
        return df[val if self.keep else ~val]


class _ToTensors:
    """Pandas block → `x:view` (scaled, missing → 0, float32) and `m:view` (1 = observed) per view."""

    def __init__(self, schema_state: dict, id_column: str | None) -> None:
        self.schema = ViewSchema.from_state(schema_state)
        self.id_column = id_column

    def __call__(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for v, cols in self.schema.columns.items():
            a = df[qualified(v, cols)].to_numpy(dtype=np.float64, na_value=np.nan)
            m = ~np.isnan(a)
            z = np.where(m, self.schema.scalers[v].transform(a), 0.0)
            out[f"x:{v}"] = z.astype(np.float32)
            out[f"m:{v}"] = m.astype(np.float32)
        if self.id_column is not None:
            out["id"] = df[self.id_column].astype(str).to_numpy()
        return out


def batch_from_tensors(batch: Mapping[str, torch.Tensor | np.ndarray], views: list[str]) -> MultiViewBatch:
    """A `MultiViewBatch` from the columns `_ToTensors` writes (torch or numpy)."""

    def tensor(x) -> torch.Tensor:
        return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))

    values = {v: tensor(batch[f"x:{v}"]) for v in views}
    masks = {v: tensor(batch[f"m:{v}"]) for v in views}
    index = np.asarray(batch["id"]) if "id" in batch else None
    return MultiViewBatch(values, masks, index)


# ----------------------------------------------------------------------------- streaming moments


def _merge(c1, m1, s1, c2, m2, s2):
    """Chan et al.'s parallel merge of (count, mean, sum of squared deviations) per column."""
    c = c1 + c2
    safe = np.maximum(c, 1)
    delta = m2 - m1
    mean = np.where(c > 0, (m1 * c1 + m2 * c2) / safe, 0.0)
    sq = s1 + s2 + delta**2 * c1 * c2 / safe
    return c, mean, sq


def _block_moments(x: np.ndarray):
    obs = ~np.isnan(x)
    c = obs.sum(0).astype(np.float64)
    mean = np.where(c > 0, np.nansum(x, 0) / np.maximum(c, 1), 0.0)
    sq = np.nansum(np.where(obs, x - mean, 0.0) ** 2, 0)
    return c, mean, sq


class _Moments:
    """Flat accumulator over D columns: count, mean, M2 (raw and log1p), min, max, #non-integer, #±Inf,
    then the number of rows and of rows with no observed entry."""

    FIELDS = ("count", "mean", "m2", "lmean", "lm2", "min", "max", "nonint", "inf")

    @classmethod
    def zero(cls, d: int) -> list[float]:
        z = np.zeros((len(cls.FIELDS), d))
        z[cls.FIELDS.index("min")] = np.inf
        z[cls.FIELDS.index("max")] = -np.inf
        return [*z.ravel().tolist(), 0.0, 0.0]

    @classmethod
    def unpack(cls, acc, d: int) -> tuple[dict[str, np.ndarray], float, float]:
        a = np.asarray(acc, dtype=np.float64)
        body = a[: len(cls.FIELDS) * d].reshape(len(cls.FIELDS), d)
        return dict(zip(cls.FIELDS, body, strict=True)), float(a[-2]), float(a[-1])

    @classmethod
    def pack(cls, f: dict[str, np.ndarray], rows: float, empty: float) -> list[float]:
        return [*np.stack([f[k] for k in cls.FIELDS]).ravel().tolist(), rows, empty]

    @classmethod
    def of_block(cls, x: np.ndarray) -> list[float]:
        inf = np.isinf(x)
        xf = np.where(inf, np.nan, x)
        c, mean, m2 = _block_moments(xf)
        _, lmean, lm2 = _block_moments(np.log1p(np.clip(xf, 0, None)))
        obs = ~np.isnan(xf)
        with np.errstate(all="ignore"):
            mn = np.where(c > 0, np.nanmin(np.where(obs, xf, np.inf), 0, initial=np.inf), np.inf)
            mx = np.where(c > 0, np.nanmax(np.where(obs, xf, -np.inf), 0, initial=-np.inf), -np.inf)
        nonint = (obs & (xf != np.round(xf))).sum(0).astype(np.float64)
        f = dict(count=c, mean=mean, m2=m2, lmean=lmean, lm2=lm2, min=mn, max=mx, nonint=nonint, inf=inf.sum(0) * 1.0)
        empty = float((~obs.any(1)).sum()) if x.shape[1] else float(x.shape[0])
        return cls.pack(f, float(x.shape[0]), empty)

    @classmethod
    def combine(cls, a, b, d: int) -> list[float]:
        fa, ra, ea = cls.unpack(a, d)
        fb, rb, eb = cls.unpack(b, d)
        c, mean, m2 = _merge(fa["count"], fa["mean"], fa["m2"], fb["count"], fb["mean"], fb["m2"])
        _, lmean, lm2 = _merge(fa["count"], fa["lmean"], fa["lm2"], fb["count"], fb["lmean"], fb["lm2"])
        f = dict(
            count=c,
            mean=mean,
            m2=m2,
            lmean=lmean,
            lm2=lm2,
            min=np.minimum(fa["min"], fb["min"]),
            max=np.maximum(fa["max"], fb["max"]),
            nonint=fa["nonint"] + fb["nonint"],
            inf=fa["inf"] + fb["inf"],
        )
        return cls.pack(f, ra + rb, ea + eb)


class _BlockMoments:
    """Pandas batch → one row holding its moments (`_Moments.of_block`) over `columns`.

    A map rather than Ray Data's `aggregate`: an aggregation runs as a hash shuffle whose single
    partition gathers the blocks and grows with the rows, while each of these tasks holds one batch
    and emits one small row; the driver merges the rows as they stream in (`moments`)."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = columns

    def __call__(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        acc = _Moments.of_block(df[self.columns].to_numpy(dtype=np.float64, na_value=np.nan))
        return {"moments": np.asarray(acc, dtype=np.float64)[None, :]}


def moments(dataset, columns: list[str], batch_size: int = 4096) -> list[float]:
    """Per-column moments of `columns` over a streamed Ray Dataset in memory that does not grow with
    the rows: per-batch partial moments in Ray Data tasks, merged on the driver (Chan et al.)."""
    d = len(columns)
    acc = _Moments.zero(d)
    parts = dataset.map_batches(_BlockMoments(columns), batch_format="pandas", batch_size=batch_size)
    for batch in parts.iter_batches(batch_size=64, batch_format="numpy"):
        for row in np.asarray(batch["moments"]).reshape(-1, len(acc)):
            acc = _Moments.combine(acc, row.tolist(), d)
    return acc


def _infer_likelihood(mn: np.ndarray, mx: np.ndarray, nonint: np.ndarray, count: np.ndarray) -> str:
    """The rule of `likelihoods.infer_likelihood`, from streamed min / max / integrality."""
    seen = count > 0
    if not seen.any():
        return "gaussian"
    return infer_from_stats(float(mn[seen].min()), float(mx[seen].max()), bool(nonint.sum() == 0))


# ----------------------------------------------------------------------------- the dataset


@dataclass
class RayMultiView:
    """An aligned multi-view Ray Dataset: the id column plus one float column `view:column` per feature."""

    dataset: object
    id_column: str
    columns: dict[str, list[str]]
    likelihoods: dict[str, str] = field(default_factory=dict)
    scalings: dict[str, str] = field(default_factory=dict)
    source: dict = field(default_factory=dict)

    @property
    def view_names(self) -> list[str]:
        return list(self.columns)

    @property
    def feature_columns(self) -> list[str]:
        return [c for v, cols in self.columns.items() for c in qualified(v, cols)]

    def _with(self, dataset) -> RayMultiView:
        return RayMultiView(dataset, self.id_column, self.columns, self.likelihoods, self.scalings, self.source)

    def split(self, val_frac: float, seed: int) -> tuple[RayMultiView, RayMultiView]:
        """(train, validation) by a stable hash of the id (see `is_validation`)."""
        fmt = dict(batch_format="pandas", zero_copy_batch=True)
        train = self.dataset.map_batches(_SplitFilter(self.id_column, val_frac, seed, False), **fmt)
        val = self.dataset.map_batches(_SplitFilter(self.id_column, val_frac, seed, True), **fmt)
        return self._with(train), self._with(val)

    def fit_schema(self) -> tuple[ViewSchema, int]:
        """Columns, likelihoods (given or inferred) and fitted scalers, from one streaming aggregation.

        Returns the schema and the number of rows. ±Inf, non-numeric values and rows with every view
        missing are `ValueError`s naming the view and column."""
        cols = self.feature_columns
        try:
            acc = moments(self.dataset, cols)
        except Exception as err:  # a read or conversion error surfaces here, before training
            raise ValueError(
                f"cannot read the data set {self.source.get('name', '')!r}: {_root_message(err)}"
            ) from None
        f, rows, empty = _Moments.unpack(acc, len(cols))
        if rows == 0:
            raise ValueError("the data set has no rows")
        bad = np.flatnonzero(f["inf"] > 0)
        if bad.size:
            v, c = cols[bad[0]].split(COLUMN_SEP, 1)
            raise ValueError(f"view {v!r}, column {c!r}: ±Inf in {int(f['inf'][bad[0]])} row(s); use NaN for missing")
        if empty:
            raise ValueError(f"{int(empty)} sample(s) have every view missing; drop them")
        scalers, likelihoods, start = {}, {}, 0
        for v, vcols in self.columns.items():
            sl = slice(start, start + len(vcols))
            start += len(vcols)
            lk = self.likelihoods.get(v) or _infer_likelihood(
                f["min"][sl], f["max"][sl], f["nonint"][sl], f["count"][sl]
            )
            kind = self.scalings.get(v) or DEFAULT_SCALING[lk]
            if kind != "none" and lk in COUNT_LIKELIHOODS:
                raise ValueError(
                    f"view {v!r}: scaling {kind!r} does not fit likelihood {lk!r}, "
                    "which models raw values; use scaling 'none' or a gaussian likelihood"
                )
            likelihoods[v] = lk
            if kind == "none":
                scalers[v] = ViewScaler("none")
                continue
            cnt = f["count"][sl]
            mean = f["lmean"][sl] if kind == "log1p" else f["mean"][sl]
            m2 = f["lm2"][sl] if kind == "log1p" else f["m2"][sl]
            mean = np.where(cnt > 0, mean, 0.0)
            var = np.where(cnt > 1, m2 / np.maximum(cnt - 1, 1), 1.0)
            std = np.sqrt(var)
            scalers[v] = ViewScaler(kind, mean, np.where(std > 1e-8, std, 1.0))
        return ViewSchema(dict(self.columns), likelihoods, scalers), int(rows)

    def tensor_dataset(self, schema: ViewSchema, with_id: bool = False):
        """Per-view `x:view` / `m:view` tensor columns (scaled), ready for `iter_torch_batches`."""
        return self.dataset.map_batches(
            _ToTensors(schema.state(), self.id_column if with_id else None), batch_format="pandas"
        )

    def to_multiview(self, sort: bool = True) -> MultiViewData:
        """Collect on the driver (small data, tests, previews): rows sorted by id."""
        df = self.dataset.to_pandas()
        if sort:
            df = df.sort_values(self.id_column, kind="stable").reset_index(drop=True)
        views = {
            v: df[qualified(v, cols)].to_numpy(dtype=np.float64, na_value=np.nan) for v, cols in self.columns.items()
        }
        return MultiViewData(
            views, likelihoods=self.likelihoods or None, index=df[self.id_column].to_numpy(), columns=self.columns
        )

    @classmethod
    def from_multiview(cls, data: MultiViewData, id_column: str = DEFAULT_ID, num_blocks: int = 8) -> RayMultiView:
        """An in-memory `MultiViewData` (e.g. an embedded data set) as a Ray Dataset."""
        frame = data.to_frame().reset_index(drop=True)
        frame.insert(0, id_column, [str(i) for i in data.index])
        k = max(1, min(num_blocks, len(frame)))
        bounds = np.linspace(0, len(frame), k + 1).astype(int)
        parts = [frame.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        ds = _ray_data().from_pandas(parts)
        return cls(ds, id_column, dict(data.columns), dict(data.likelihoods), {}, {"dataset": "in-memory"})


def _root_message(err: BaseException) -> str:
    msg = str(err).strip().splitlines()
    tail = [m for m in msg if "Error" in m or "Invalid" in m]
    return (tail[-1] if tail else (msg[-1] if msg else type(err).__name__))[:500]


def _read_table(files: list[str], fmt: str, id_column: str, columns: list[str]):
    rd = _ray_data()
    if fmt == "parquet":
        return rd.read_parquet(files).select_columns([id_column, *columns])
    import pyarrow as pa
    import pyarrow.csv as pcsv

    convert = pcsv.ConvertOptions(
        column_types={id_column: pa.string(), **{c: pa.float64() for c in columns}},
        include_columns=[id_column, *columns],
    )
    return rd.read_csv(files, convert_options=convert)


def read_spec(spec: str | Path | Mapping | DatasetSpec, num_partitions: int | None = None) -> RayMultiView:
    """Read the data set a spec describes, aligned on the id (streamed; nothing is collected).

    The spec is checked against the files first (`validate_spec`): a bad spec is a `ValueError`.
    `num_partitions` is the hash partition count of the per-view join (default: one per input file
    or AnnData row range, at most 64).
    """
    resolved: ResolvedSpec = validate_spec(spec)
    idc = resolved.id_column
    meta = {"name": resolved.spec.name or "", "spec": resolved.spec.model_dump(mode="json")}
    if resolved.spec.layout == "wide":
        cols = [c for s in resolved.views.values() for c in s.columns]
        ds = _read_table(resolved.table_files, resolved.table_format, idc, cols)
        renames = {c: f"{v}{COLUMN_SEP}{c}" for v, s in resolved.views.items() for c in s.columns}
        ds = ds.map_batches(_Normalise(idc, renames), batch_format="pyarrow")
    else:
        ds = None
        nfiles = sum(_num_inputs(s) for s in resolved.views.values())
        parts = num_partitions or max(1, min(nfiles, 64))
        for v, s in resolved.views.items():
            if s.anndata is not None:
                part = omics.read_view(s.anndata, s.columns, idc)
            else:
                part = _read_table(s.files, s.format, idc, s.columns)
            part = part.map_batches(
                _Normalise(idc, dict(zip(s.columns, qualified(v, s.columns), strict=True))), batch_format="pyarrow"
            )
            ds = part if ds is None else ds.join(part, join_type="full_outer", num_partitions=parts, on=(idc,))
        meta["joined"] = len(resolved.views) > 1
        ds = ds.map_batches(
            _FillAbsent(idc, [c for v, s in resolved.views.items() for c in qualified(v, s.columns)]),
            batch_format="pyarrow",
        )
    likelihoods = {v: s.likelihood for v, s in resolved.views.items() if s.likelihood}
    scalings = {v: s.scaling for v, s in resolved.views.items() if s.scaling}
    return RayMultiView(ds, idc, resolved.columns, likelihoods, scalings, meta)


def _num_inputs(source: ViewSource) -> int:
    """Files of a table view, row ranges of an AnnData view."""
    if source.anndata is None:
        return len(source.files)
    return len(omics.row_ranges(source.anndata.n_obs, len(source.anndata.var_names)))


class _FillAbsent:
    """After the outer join: a view absent for a sample comes back as nulls → NaN; fixed column order."""

    def __init__(self, id_column: str, columns: list[str]) -> None:
        self.id_column, self.columns = id_column, columns

    def __call__(self, table):
        import pyarrow as pa
        import pyarrow.compute as pc

        arrays = [pc.cast(table.column(self.id_column), pa.string())]
        arrays += [pc.fill_null(pc.cast(table.column(c), pa.float64()), float("nan")) for c in self.columns]
        return pa.Table.from_arrays(arrays, names=[self.id_column, *self.columns])


def read_dataset(source, num_partitions: int | None = None) -> RayMultiView:
    """A spec file / dict / `DatasetSpec`, an embedded data set name, or a `MultiViewData`, as a `RayMultiView`."""
    from .datasets import DATASETS, load_dataset

    if isinstance(source, RayMultiView):
        return source
    if isinstance(source, MultiViewData):
        return RayMultiView.from_multiview(source)
    if isinstance(source, str) and source in DATASETS:
        rmv = RayMultiView.from_multiview(load_dataset(source))
        rmv.source = {"dataset": source, "name": source}
        return rmv
    if isinstance(source, str | Path) and not Path(source).exists() and not str(source).endswith((".yaml", ".yml")):
        raise ValueError(f"unknown data set {str(source)!r}: not an embedded data set {list(DATASETS)} nor a spec file")
    return read_spec(source, num_partitions)


__all__ = [
    "RayMultiView",
    "batch_from_tensors",
    "is_validation",
    "moments",
    "qualified",
    "read_dataset",
    "read_spec",
]
