"""`Predictor`: the one class that turns a checkpoint or an MLflow model URI into imputations.

The pyfunc, `mvimpute impute`, the Ray Data batch job and the Serve endpoint all call it:

    p = Predictor.load(model_uri="models:/mvimpute-jpvae@champion")   # or Predictor.load(checkpoint="model.pt")
    out = p.predict(frame, outputs=("mean", "std", "interval"), n_samples=100, level=0.9)
    out.to_frame()                                   # `view:feature`, `view:feature__std`, `__lower`, `__upper`
    p.predict_instances([{"top": [0.1, None, ...], "bottom": None}], outputs=("mean", "samples"))
    p.predict_requests([p.request(instances, ids), ...])   # the endpoint: several requests, one pass
    p.reload_if_moved()                              # the model a moved alias names now, else None

Inputs are a wide frame (`view:feature` columns, NaN = missing) or a list of instances (dict view →
list of number | null, or null / left out for a wholly missing view). Rows keep their ids and
order; observed entries are returned exactly as given, in the mean, every draw, every interval
and every quantile, and their spread is 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .data.multiview import COLUMN_SEP, MultiViewData
from .imputer import MultiViewImputer
from .names import DEFAULT_MODEL_URI, MODEL_URI_ENV

OUTPUTS = ("mean", "std", "interval", "quantiles", "samples")
MAX_TRAINING_ROWS = 100_000  # the most training rows a served model may hold (KNN), unless set otherwise
MAX_TRAINING_ROWS_ENV = "MVIMPUTE_MAX_TRAINING_ROWS"
DRAW_OUTPUTS = frozenset({"std", "interval", "quantiles", "samples"})


def max_training_rows(limit: int | None = None) -> int:
    """`limit`, else `MVIMPUTE_MAX_TRAINING_ROWS`, else `MAX_TRAINING_ROWS`."""
    if limit is None:
        raw = os.environ.get(MAX_TRAINING_ROWS_ENV)
        try:
            limit = int(raw) if raw else MAX_TRAINING_ROWS
        except ValueError:
            raise ValueError(f"{MAX_TRAINING_ROWS_ENV}={raw!r} is not a whole number of rows") from None
    if limit < 1:
        raise ValueError(f"the training-rows limit must be >= 1, got {limit}")
    return limit


def check_training_rows(imputer, limit: int | None = None) -> None:
    """A `ValueError` naming the size and the limit when the model holds more training rows than
    `max_training_rows(limit)` (a KNN model's state is its training rows: memory and time per
    request grow with them)."""
    held = imputer.model_.training_rows_held()
    limit = max_training_rows(limit)
    if held is not None and held["rows"] > limit:
        raise ValueError(
            f"model {imputer.model_name!r} holds {held['rows']:,} training rows × {held['columns']} columns "
            f"({held['bytes'] / 2**20:.1f} MiB) in its checkpoint; serving it is refused above {limit:,} rows "
            f"(max_training_rows, or {MAX_TRAINING_ROWS_ENV})"
        )


def default_model_uri(model_uri: str | None = None) -> str:
    """`model_uri`, else `MVIMPUTE_MODEL_URI`, else `models:/mvimpute-jpvae@champion`."""
    return model_uri or os.environ.get(MODEL_URI_ENV) or DEFAULT_MODEL_URI


class InputError(ValueError):
    """Bad input; `loc` names where: (instance, view, position) for instances, (column,) for frames."""

    def __init__(self, loc: tuple, message: str, what: str | None = "instances") -> None:
        self.loc = tuple(loc)
        where = "".join(f"[{p!r}]" for p in self.loc)
        super().__init__(f"{what}{where}: {message}" if self.loc and what else message)
        self.message = message


def central_interval(imputer, data: MultiViewData, level: float, n_samples: int, draws=None):
    """Per-entry central `level` interval: (lower, upper), dicts view → (n, d_v).

    The imputer's calibrated `predict_interval(views, level, n_samples)` when it has one, else the
    (1 - level)/2 and (1 + level)/2 quantiles of `n_samples` posterior draws (`draws` when given)."""
    if hasattr(imputer, "predict_interval"):
        lower, upper = imputer.predict_interval(data, level=level, n_samples=n_samples)
        return _as_arrays(lower), _as_arrays(upper)
    if draws is None:
        draws = imputer.sample(data, n_samples=n_samples)
    a = (1.0 - level) / 2.0
    return (
        {v: np.quantile(d, a, axis=0) for v, d in draws.items()},
        {v: np.quantile(d, 1.0 - a, axis=0) for v, d in draws.items()},
    )


def _as_arrays(views) -> dict[str, np.ndarray]:
    if isinstance(views, MultiViewData):
        return dict(views.views)
    return {v: np.asarray(x, dtype=np.float64) for v, x in views.items()}


@dataclass
class Prediction:
    """What `Predictor.predict` returns: per view (n, d_v) arrays, draws (S, n, d_v); rows in input order."""

    index: np.ndarray
    columns: dict[str, list[str]]
    observed: dict[str, np.ndarray]
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray] | None = None
    lower: dict[str, np.ndarray] | None = None
    upper: dict[str, np.ndarray] | None = None
    level: float | None = None
    quantiles: dict[float, dict[str, np.ndarray]] | None = None
    samples: dict[str, np.ndarray] | None = None
    outputs: tuple[str, ...] = field(default=("mean",))

    def __len__(self) -> int:
        return len(self.index)

    def select(self, rows: slice | np.ndarray) -> Prediction:
        """The prediction for some rows (e.g. one request's share of a batch)."""

        def pick(d):
            return None if d is None else {v: a[rows] for v, a in d.items()}

        return Prediction(
            index=self.index[rows],
            columns=self.columns,
            observed=pick(self.observed),
            mean=pick(self.mean),
            std=pick(self.std),
            lower=pick(self.lower),
            upper=pick(self.upper),
            level=self.level,
            quantiles=None if self.quantiles is None else {q: pick(d) for q, d in self.quantiles.items()},
            samples=None if self.samples is None else {v: a[:, rows] for v, a in self.samples.items()},
            outputs=self.outputs,
        )

    def to_frame(self) -> pd.DataFrame:
        """Wide frame: `view:feature` (the mean), then `view:feature__std`, `__lower`, `__upper`,
        `__q<q>` and `__draws` (a list of the draws) columns for what was asked; the input's index."""
        cols: dict[str, object] = {}
        for v, names in self.columns.items():
            for j, c in enumerate(names):
                cols[f"{v}{COLUMN_SEP}{c}"] = self.mean[v][:, j]
        for suffix, part in (("std", self.std), ("lower", self.lower), ("upper", self.upper)):
            if part is not None:
                for v, names in self.columns.items():
                    for j, c in enumerate(names):
                        cols[f"{v}{COLUMN_SEP}{c}__{suffix}"] = part[v][:, j]
        for q, part in (self.quantiles or {}).items():
            for v, names in self.columns.items():
                for j, c in enumerate(names):
                    cols[f"{v}{COLUMN_SEP}{c}__q{q:g}"] = part[v][:, j]
        if self.samples is not None:
            for v, names in self.columns.items():
                draws = np.ascontiguousarray(np.moveaxis(self.samples[v], 0, -1))  # (n, d, S)
                for j, c in enumerate(names):
                    cols[f"{v}{COLUMN_SEP}{c}__draws"] = list(draws[:, j])
        return pd.DataFrame(cols, index=pd.Index(self.index))

    def to_instances(self) -> list[dict]:
        """One JSON-ready dict per row: `mean`, and `std`, `lower`/`upper`, `quantiles`, `samples` when asked."""
        out = []
        tolist = {k: _tolist(getattr(self, k)) for k in ("mean", "std", "lower", "upper")}
        samples = None if self.samples is None else {v: np.moveaxis(a, 0, 1).tolist() for v, a in self.samples.items()}
        quantiles = {f"{q:g}": _tolist(d) for q, d in (self.quantiles or {}).items()}
        for i in range(len(self)):
            item: dict = {"mean": {v: a[i] for v, a in tolist["mean"].items()}}
            for key in ("std", "lower", "upper"):
                if tolist[key] is not None:
                    item[key] = {v: a[i] for v, a in tolist[key].items()}
            if quantiles:
                item["quantiles"] = {q: {v: a[i] for v, a in d.items()} for q, d in quantiles.items()}
            if samples is not None:
                item["samples"] = {v: a[i] for v, a in samples.items()}
            out.append(item)
        return out


@dataclass
class InstanceRequest:
    """One request's instances, checked against the model, and what it asks for (`Predictor.request`)."""

    data: MultiViewData
    ids: Sequence | None
    outputs: tuple[str, ...]
    n_samples: int
    level: float

    @property
    def asks(self) -> tuple:
        return self.outputs, self.n_samples, self.level


def _file_digest(path: str | Path) -> str | None:
    """The first 16 hex digits of a local checkpoint file's SHA-256 (which model, not where it sits); None
    for a URI."""
    import hashlib

    from .checkpoint import checkpoint_file
    from .storage import is_uri

    if is_uri(path):
        return None
    local = checkpoint_file(path)
    if not local.is_file():
        return None
    with open(local, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def _tolist(d):
    return None if d is None else {v: np.asarray(a, dtype=np.float64).tolist() for v, a in d.items()}


class Predictor:
    """Imputations from one trained model: mean, and on request per-entry std, central intervals,
    quantiles and draws. `info` describes where the model came from (name, version, alias, URI)."""

    def __init__(
        self, imputer: MultiViewImputer, info: Mapping | None = None, max_training_rows: int | None = None
    ) -> None:
        imputer._check_fitted()
        check_training_rows(imputer, max_training_rows)
        self.max_training_rows = max_training_rows
        self.imputer = imputer
        self.info = dict(info or {})
        self._origin: tuple | None = None  # (model URI, tracking URI, device) when loaded from the registry

    # -- loading
    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", info: Mapping | None = None, max_training_rows: int | None = None
    ) -> Predictor:
        """`max_training_rows`: refuse a model holding more training rows (default: `max_training_rows()`)."""
        imp = MultiViewImputer.load(path, device=device)
        digest = _file_digest(path)
        extra = {"checkpoint_sha256": digest} if digest else {}
        return cls(imp, {"checkpoint": str(path), **extra, **(info or {})}, max_training_rows)

    @classmethod
    def from_model_uri(
        cls,
        model_uri: str | None = None,
        tracking_uri: str | None = None,
        device: str = "auto",
        max_training_rows: int | None = None,
    ) -> Predictor:
        """A logged or registered mvimpute model (`models:/name@alias`, `models:/name/3`, `runs:/…/model`)."""
        from . import registry

        uri = default_model_uri(model_uri)
        path, info = registry.fetch_checkpoint(uri, tracking_uri)
        predictor = cls.from_checkpoint(path, device=device, info=info, max_training_rows=max_training_rows)
        predictor._origin = (uri, tracking_uri, device)
        return predictor

    @classmethod
    def load(
        cls,
        checkpoint: str | Path | None = None,
        model_uri: str | None = None,
        tracking_uri: str | None = None,
        device: str = "auto",
        max_training_rows: int | None = None,
    ) -> Predictor:
        """From `checkpoint` when given, else from `model_uri` (default: `MVIMPUTE_MODEL_URI`, else the champion)."""
        if checkpoint is not None and model_uri is not None:
            raise ValueError("give a checkpoint or a model URI, not both")
        if checkpoint is not None:
            return cls.from_checkpoint(checkpoint, device=device, max_training_rows=max_training_rows)
        return cls.from_model_uri(model_uri, tracking_uri, device=device, max_training_rows=max_training_rows)

    @property
    def follows_alias(self) -> bool:
        """Loaded from a registry alias (`models:/name@alias`), which can move to another version."""
        if self._origin is None:
            return False
        from . import registry

        return registry.is_alias(self._origin[0])

    def reload_if_moved(self) -> Predictor | None:
        """The model the alias names now, when it has moved off the version loaded here; else None."""
        if not self.follows_alias:
            return None
        from . import registry

        uri, tracking_uri, device = self._origin
        now = registry.model_version(uri, tracking_uri).get("version")
        if now is None or now == self.info.get("version"):
            return None
        return type(self).from_model_uri(uri, tracking_uri, device=device, max_training_rows=self.max_training_rows)

    # -- what the model expects
    @property
    def schema(self):
        return self.imputer.schema_

    @property
    def view_names(self) -> list[str]:
        return self.schema.view_names

    @property
    def dims(self) -> dict[str, int]:
        return self.schema.dims

    @property
    def input_columns(self) -> list[str]:
        return [f"{v}{COLUMN_SEP}{c}" for v, cs in self.schema.columns.items() for c in cs]

    def metadata(self) -> dict:
        """Model name and origin, views with widths, columns and likelihoods, the calibration if any,
        and, for a model `auto` picked, the candidates' table (`selection`)."""
        imp = self.imputer
        return {
            **{k: v for k, v in self.info.items() if k != "checkpoint"},
            "model": imp.model_name,
            "model_config": imp.model_params,
            "views": {
                v: {"width": len(cs), "likelihood": self.schema.likelihoods[v], "columns": list(cs)}
                for v, cs in self.schema.columns.items()
            },
            "calibration": self.calibration(),
            "training_rows": imp.model_.training_rows_held(),
            # model="auto": the candidates and their validation scores, the winner being this model
            "selection": getattr(imp, "selection_", None),
        }

    def calibration(self) -> dict | None:
        """The model's split-conformal calibration (`ConformalCalibration.summary`) and the draws it was
        fitted with (intervals hold their level for that `n_samples`); None for a model without one."""
        calibration = getattr(self.imputer.model_, "calibration", None)
        if calibration is None:
            return None
        return {"n_samples": self.imputer.train_config.calibration_samples, **calibration.summary()}

    # -- input checks
    def check_instances(self, instances: Sequence[Mapping], ids: Sequence | None = None) -> MultiViewData:
        """Instances → `MultiViewData` in the model's view order; an `InputError` names instance, view and position."""
        if isinstance(instances, Mapping) or not isinstance(instances, Sequence):
            raise InputError((), "instances must be a list of objects: view name → list of numbers or null")
        if ids is not None and len(ids) != len(instances):
            raise InputError((), f"{len(ids)} ids for {len(instances)} instances")
        n = len(instances)
        if n == 0:
            raise InputError((), "no instances")
        dims = self.dims
        arrays = {v: np.full((n, d), np.nan) for v, d in dims.items()}
        for i, inst in enumerate(instances):
            if not isinstance(inst, Mapping):
                raise InputError((i,), f"an instance is an object view name → list, got {type(inst).__name__}")
            unknown = [v for v in inst if v not in dims]
            if unknown:
                raise InputError((i, unknown[0]), f"unknown view {unknown[0]!r}; the model has views {list(dims)}")
            observed = 0
            for v, values in inst.items():
                if values is None:
                    continue
                if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
                    raise InputError((i, v), f"view {v!r} must be a list of {dims[v]} numbers or null")
                if len(values) != dims[v]:
                    raise InputError((i, v), f"view {v!r} has {len(values)} values; the model expects {dims[v]}")
                row = arrays[v][i]
                for j, x in enumerate(values):
                    if x is None:
                        continue
                    if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating):
                        raise InputError((i, v, j), f"{x!r} is not a number (use null for missing)")
                    x = float(x)
                    if math.isinf(x):
                        raise InputError((i, v, j), f"{x} is not finite (use null for missing)")
                    if not math.isnan(x):
                        row[j] = x
                        observed += 1
            if observed == 0:
                raise InputError((i,), "every view is missing: an instance needs at least one observed value")
        index = np.arange(n) if ids is None else np.asarray(ids, dtype=object)
        try:
            return MultiViewData(arrays, likelihoods=self.schema.likelihoods, index=index, columns=self.schema.columns)
        except ValueError as err:  # values the view's likelihood cannot hold (a bounded view outside [0, 1], ...)
            raise self._first_bad_instance(arrays) or InputError((), str(err)) from None

    def _first_bad_instance(self, arrays: Mapping[str, np.ndarray]) -> InputError | None:
        """The first instance and view whose values contradict the view's likelihood, as an `InputError`."""
        from .likelihoods import check_values

        n = len(next(iter(arrays.values())))
        for i in range(n):
            for v, a in arrays.items():
                try:
                    check_values(v, self.schema.columns[v], a[i : i + 1], self.schema.likelihoods[v])
                except ValueError as err:
                    return InputError((i, v), str(err).replace("(1 row(s), e.g.", "(e.g."))
        return None

    def check(self, views) -> MultiViewData:
        """A wide frame (`view:feature` columns), dict of views or `MultiViewData`, checked against the model."""
        return self.schema.check(views)

    # -- imputation
    def predict(
        self,
        views,
        outputs: Sequence[str] = ("mean",),
        n_samples: int = 100,
        level: float = 0.9,
        quantiles: Sequence[float] | None = None,
    ) -> Prediction:
        """Impute `views` (frame, dict or `MultiViewData`; instances go through `predict_instances`).

        `outputs` ⊆ {mean, std, interval, quantiles, samples}; draws-based outputs use `n_samples`
        posterior draws. The mean is always returned (`MultiViewImputer.transform`)."""
        outputs = tuple(dict.fromkeys(["mean", *outputs]))
        bad = [o for o in outputs if o not in OUTPUTS]
        if bad:
            raise ValueError(f"unknown output(s) {bad}; choose from {list(OUTPUTS)}")
        if "quantiles" in outputs and not quantiles:
            raise ValueError("output 'quantiles' needs a list of quantiles in (0, 1)")
        for q in quantiles or ():
            if not 0 < q < 1:
                raise ValueError(f"quantile {q} is not in (0, 1)")
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        draws_needed = bool(DRAW_OUTPUTS & set(outputs))
        if draws_needed and n_samples < 2:
            raise ValueError(f"std, intervals, quantiles and samples need n_samples ≥ 2, got {n_samples}")
        data = views if isinstance(views, MultiViewData) else self.check(views)
        imp = self.imputer
        observed = data.masks
        mean = imp.transform(data).views
        pred = Prediction(index=data.index, columns=dict(self.schema.columns), observed=observed, mean=mean)
        pred.outputs = outputs
        if not draws_needed:
            return pred
        draws = imp.sample(data, n_samples=n_samples)
        if "std" in outputs:
            pred.std = {v: np.where(observed[v], 0.0, d.std(0, ddof=1)) for v, d in draws.items()}
        if "interval" in outputs:
            lower, upper = central_interval(imp, data, level, n_samples, draws)
            pred.lower = {v: np.where(observed[v], data.views[v], lower[v]) for v in lower}
            pred.upper = {v: np.where(observed[v], data.views[v], upper[v]) for v in upper}
            pred.level = level
        if "quantiles" in outputs:
            pred.quantiles = {float(q): {v: np.quantile(d, q, axis=0) for v, d in draws.items()} for q in quantiles}
        if "samples" in outputs:
            pred.samples = draws
        return pred

    def predict_instances(self, instances: Sequence[Mapping], ids: Sequence | None = None, **kwargs) -> list[dict]:
        """Instances in, one dict per instance out (see `Prediction.to_instances`), ids kept when given."""
        data = self.check_instances(instances, ids)
        items = self.predict(data, **kwargs).to_instances()
        if ids is not None:
            for item, i in zip(items, ids, strict=True):
                item["id"] = i
        return items

    def request(
        self,
        instances: Sequence[Mapping],
        ids: Sequence | None = None,
        outputs: Sequence[str] = ("mean",),
        n_samples: int = 100,
        level: float = 0.9,
    ) -> InstanceRequest:
        """Instances checked now (an `InputError` names instance, view and position), predicted later,
        with others, by `predict_requests`; `n_samples` is dropped when only the mean is asked for."""
        outputs = tuple(dict.fromkeys(["mean", *outputs]))
        draws = bool(DRAW_OUTPUTS & set(outputs))
        return InstanceRequest(self.check_instances(instances, ids), ids, outputs, n_samples if draws else 0, level)

    def predict_requests(self, requests: Sequence[InstanceRequest]) -> list[list[dict]]:
        """Per request, one dict per instance (`Prediction.to_instances`, ids kept); one forward pass for
        all the requests that ask for the same outputs, draws and level."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.asks, []).append(i)
        out: list = [None] * len(requests)
        for idx in groups.values():
            for i, items in zip(idx, self._predict_together([requests[i] for i in idx]), strict=True):
                out[i] = items
        return out

    def _predict_together(self, requests: Sequence[InstanceRequest]) -> list[list[dict]]:
        datas = [r.data for r in requests]
        merged = MultiViewData(
            {v: np.concatenate([d.views[v] for d in datas]) for v in datas[0].views},
            likelihoods=datas[0].likelihoods,
            columns=datas[0].columns,
        )
        outputs, n_samples, level = requests[0].asks
        pred = self.predict(merged, outputs=outputs, n_samples=n_samples, level=level)
        out, start = [], 0
        for r in requests:
            items = pred.select(slice(start, start + len(r.data))).to_instances()
            start += len(r.data)
            if r.ids is not None:
                for item, i in zip(items, r.ids, strict=True):
                    item["id"] = i
            out.append(items)
        return out

    def predict_frame(self, frame: pd.DataFrame, id_column: str | None = None, **kwargs) -> pd.DataFrame:
        """A wide frame in, the imputed frame out (mean in the input's columns, extra columns for what was
        asked), the id column first when given, rows in input order."""
        ids = None
        if id_column is not None:
            if id_column not in frame.columns:
                raise InputError((id_column,), f"no column {id_column!r}", what=None)
            ids = frame[id_column].to_numpy()
            frame = frame.drop(columns=[id_column])
        out = self.predict(frame.reset_index(drop=True), **kwargs).to_frame().reset_index(drop=True)
        given = [c for c in frame.columns if c in out.columns]  # the input's column order first
        out = out[[*given, *(c for c in out.columns if c not in set(given))]]
        if ids is not None:
            out.insert(0, id_column, ids)
        return out


__all__ = [
    "DEFAULT_MODEL_URI",
    "MODEL_URI_ENV",
    "InputError",
    "InstanceRequest",
    "Prediction",
    "Predictor",
    "central_interval",
    "check_training_rows",
    "default_model_uri",
    "max_training_rows",
]
