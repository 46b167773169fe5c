"""Live calibration and input drift of a served model, against the training reference its checkpoint keeps.

Every request carries observed entries whose truth is known. For a share of requests, `Monitor`
hides some observed entries and whole observed views the way the validation split does
(`training.ValidationSet.from_batch`, the training config's `val_hide_frac` / `val_view_frac`),
imputes them with the served model and scores them per view (`hidden_sums`): coverage and width of
the served (calibrated) 50 % and 90 % intervals, CRPS of the calibrated draws (scoringrules) and
RMSE of the mean — in the model's scaled space (standard units of a standardised view). The same
function scores the validation split at fit time (`training_reference`), which the checkpoint keeps.

Input drift per view, on the observed values in scaled space: each feature's standardised mean
shift (live mean − training mean) / training sd, and its population stability index
PSI = Σ_b (p_b − q_b) ln(p_b / q_b) over the bins the training deciles cut (q_b: training's share of
bin b, p_b: the live share); and the share of instances missing the whole view, against training's.

Live values cover a sliding window of the last `window` monitored instances. A view's state is
`degraded` when, with at least `MIN_ROWS` scored instances, its live 50 % or 90 % coverage lies
outside reference ± max(`MIN_BAND`, `Z_BAND`·√(p(1−p)/rows)) (rows, not entries: the entries of one
instance are not independent); else `ok`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

import numpy as np
import scoringrules as sr
import torch

from .data.multiview import MultiViewData, ViewSchema
from .models.base import row_chunks

REFERENCE_VERSION = 1
LEVELS = (0.5, 0.9)
N_BINS = 10  # PSI bins: the training deciles of each feature
PSI_FLOOR = 1e-4  # a bin's share is floored here so an empty bin keeps the PSI finite (the usual convention)
MIN_ROWS = 100  # scored instances of a view before its coverage band is judged
MIN_BAND = 0.05  # the band's least half-width around the reference coverage
Z_BAND = 3.0  # the band's half-width in binomial standard errors of the live coverage
DEFAULT_SHARE = 0.05
DEFAULT_WINDOW = 2000  # monitored instances the live values cover
BUCKETS = 10  # the window slides a tenth at a time
MIN_FEATURE_SD = 1e-6  # a feature constant in training has no standardised shift
SCORES = ("rows", "entries", "covered_50", "covered_90", "width_50", "width_90", "crps", "sq_err")


# ----------------------------------------------------------------------------- scoring hidden entries


@torch.no_grad()
def hidden_sums(model, corrupted, truth: Mapping, hidden: Mapping, n_samples: int) -> dict[str, np.ndarray]:
    """Per view, the sums `SCORES` over the `hidden` entries of `corrupted` (a scaled `MultiViewBatch`),
    whose truths (scaled) `truth` holds: rows with a hidden entry, entries, entries inside the served
    50 % / 90 % intervals, the intervals' widths, CRPS of the calibrated draws, squared error of the mean."""
    was_training = model.training
    model.eval()
    out = {v: np.zeros(len(SCORES)) for v in hidden}
    for rows in row_chunks(len(corrupted)):
        batch = corrupted.select(rows)
        raw = model.impute(batch, n_samples, censored=False)  # the latent draws `intervals` and `sample_draws` use
        missing = model.view_missing(batch)
        calibration = model.calibration
        draws = model.keep_observed(batch, calibration.stretch_draws(raw, missing))
        mean = model.impute_mean(batch)
        for v, h_all in hidden.items():
            h = torch.as_tensor(h_all[rows], device=raw[v].device).bool()
            if not bool(h.any()):
                continue
            y = torch.as_tensor(truth[v][rows], device=raw[v].device)[h]
            s = out[v]
            s[0] += int(h.any(1).sum())
            s[1] += int(h.sum())
            for k, level in enumerate(LEVELS):
                lo, hi = calibration.interval(v, raw[v], level, missing[v], True)
                lo, hi = lo[h], hi[h]
                s[2 + k] += float(((y >= lo) & (y <= hi)).sum())
                s[4 + k] += float((hi - lo).sum())
            ens = draws[v][:, h].double().cpu().numpy()
            s[6] += float(np.sum(sr.crps_ensemble(y.double().cpu().numpy(), ens, m_axis=0)))
            s[7] += float((mean[v][h] - y).double().pow(2).sum())
    model.train(was_training)
    return out


def scores_from_sums(s: np.ndarray) -> dict[str, float | int | None]:
    """Coverage, mean width, CRPS and RMSE per hidden entry from `hidden_sums`' sums."""
    rows, entries = int(s[0]), int(s[1])
    if entries == 0:
        return {"rows": rows, "entries": 0, **{k: None for k in _SCORE_NAMES}}
    per = [float(x) / entries for x in s[2:]]  # plain floats: the checkpoint loads with weights_only
    return {
        "rows": rows,
        "entries": entries,
        **dict(zip(_SCORE_NAMES[:5], per[:5], strict=True)),
        "rmse": math.sqrt(per[5]),
    }


_SCORE_NAMES = ("coverage_50", "coverage_90", "width_50", "width_90", "crps", "rmse")


# ----------------------------------------------------------------------------- drift statistics


def bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(n, d) bin of each value among the N_BINS bins the (N_BINS − 1, d) `edges` cut: the number of
    edges ≤ the value (NaN: bin 0, excluded by the caller)."""
    return (x[:, :, None] >= edges.T[None, :, :]).sum(-1)


def feature_counts(x: np.ndarray, edges: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per feature of scaled values x (n, d), NaN = missing: observed count, sum, and (with `edges`)
    the (d, N_BINS) counts per bin."""
    obs = ~np.isnan(x)
    out = {"count": obs.sum(0).astype(np.int64), "sum": np.where(obs, x, 0.0).sum(0)}
    if edges is not None:
        d = x.shape[1]
        idx = bin_index(np.where(obs, x, -np.inf), edges) + N_BINS * np.arange(d)[None, :]
        out["bins"] = np.bincount(idx[obs], minlength=d * N_BINS).reshape(d, N_BINS)
    return out


def psi(live: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Population stability index per row of (d, N_BINS) live counts against (d, N_BINS) reference
    shares; NaN for a feature without live values."""
    total = live.sum(1, keepdims=True)
    p = np.maximum(live / np.maximum(total, 1), PSI_FLOOR)
    q = np.maximum(reference, PSI_FLOOR)
    out = ((p - q) * np.log(p / q)).sum(1)
    return np.where(total[:, 0] > 0, out, np.nan)


def mean_shift(count: np.ndarray, total: np.ndarray, ref_mean: np.ndarray, ref_sd: np.ndarray) -> np.ndarray:
    """Per feature (live mean − training mean) / training sd; NaN without live values or a constant feature."""
    ok = (count > 0) & (ref_sd > MIN_FEATURE_SD)
    live_mean = total / np.maximum(count, 1)
    return np.where(ok, (live_mean - ref_mean) / np.where(ok, ref_sd, 1.0), np.nan)


def view_present(x: np.ndarray) -> np.ndarray:
    return ~np.isnan(x).all(1)


# ----------------------------------------------------------------------------- the training reference


def training_reference(
    model,
    schema: ViewSchema,
    train: MultiViewData | None,
    validation=None,
    n_samples: int = 100,
    seed: int = 0,
    *,
    scaled: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """What monitoring compares live values with, computed once at fit time (plain lists and numbers,
    no pickles): per view the training share missing the view, per feature the mean, sd, deciles and
    bin shares of the scaled observed values (of `train`, or the already `scaled` arrays, NaN =
    missing); and, with a `validation` set (`ValidationSet`), the scores `hidden_sums` gives on its
    hidden entries with `n_samples` draws."""
    import warnings

    if scaled is None:
        scaled = {v: schema.scalers[v].transform(np.asarray(train.views[v], np.float64)) for v in schema.view_names}
    views = {}
    for v in schema.view_names:
        x = np.asarray(scaled[v], dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a feature never observed: NaN statistics
            mean = np.nanmean(x, 0)
            sd = np.nanstd(x, 0)
            edges = np.nanquantile(x, np.arange(1, N_BINS) / N_BINS, axis=0)  # (N_BINS − 1, d)
        counts = feature_counts(x, edges)
        shares = counts["bins"] / np.maximum(counts["count"][:, None], 1)
        views[v] = {
            "rows": int(x.shape[0]),
            "missing_share": float(1.0 - view_present(x).mean()),
            "feature_mean": np.nan_to_num(mean).tolist(),
            "feature_sd": np.nan_to_num(sd).tolist(),
            "quantile_edges": np.nan_to_num(edges).tolist(),
            "bin_shares": shares.tolist(),
        }
    scores = None
    if validation is not None and hasattr(model, "calibration"):
        validation = validation.to(_device(model))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sums = hidden_sums(model, validation.corrupted, validation.truth.values, validation.hidden, n_samples)
        scores = {v: scores_from_sums(s) for v, s in sums.items()}
    return {
        "version": REFERENCE_VERSION,
        "space": "scaled",
        "n_samples": n_samples,
        "views": views,
        "validation": scores,
    }


# ----------------------------------------------------------------------------- the live monitor


class _Bucket:
    """Sums over some monitored instances: calibration sums, view presence, per-feature counts."""

    def __init__(self, dims: Mapping[str, int], binned: bool) -> None:
        self.instances = 0
        self.scores = {v: np.zeros(len(SCORES)) for v in dims}
        self.present = {v: 0 for v in dims}
        self.count = {v: np.zeros(d, np.int64) for v, d in dims.items()}
        self.sum = {v: np.zeros(d) for v, d in dims.items()}
        self.bins = {v: np.zeros((d, N_BINS), np.int64) for v, d in dims.items()} if binned else None


class Monitor:
    """Live calibration and drift of one served model over a sliding window of monitored instances.

    `sampled()` draws whether a request is monitored (probability `share`, from its own seeded
    generator); `observe(data)` scores one request's instances (`MultiViewData`, as checked by the
    predictor) and must not run concurrently with itself; `summary()` is the JSON view. Hiding and
    imputing draw from generators seeded by `seed` and the request's count, inside a forked torch
    RNG: the draws served to clients are the same with monitoring on or off."""

    def __init__(
        self,
        model,
        schema: ViewSchema,
        reference: Mapping | None = None,
        *,
        hide_frac: float = 0.2,
        view_frac: float = 0.2,
        n_samples: int = 100,
        share: float = DEFAULT_SHARE,
        window: int = DEFAULT_WINDOW,
        seed: int = 0,
    ) -> None:
        if not 0 <= share <= 1:
            raise ValueError(f"monitoring share must lie in [0, 1], got {share}")
        if window < BUCKETS:
            raise ValueError(f"monitoring window must be at least {BUCKETS} instances, got {window}")
        self.model, self.schema = model, schema
        self.reference = _usable_reference(reference, schema)
        self.hide_frac, self.view_frac, self.n_samples = hide_frac, view_frac, n_samples
        self.share, self.window, self.seed = share, window, seed
        self._rng = np.random.default_rng(seed)
        self._buckets: deque[_Bucket] = deque([self._bucket()], maxlen=BUCKETS)
        self.requests_seen = 0
        self.requests_monitored = 0
        self._edges = None
        if self.reference is not None:
            self._edges = {v: np.asarray(r["quantile_edges"], np.float64) for v, r in self.reference["views"].items()}

    @classmethod
    def for_imputer(cls, imputer, **kwargs) -> Monitor:
        """A monitor of a fitted `MultiViewImputer`, with its training config's hiding rates and draws."""
        cfg = imputer.train_config
        return cls(
            imputer.model_,
            imputer.schema_,
            getattr(imputer, "monitoring_reference_", None),
            hide_frac=cfg.val_hide_frac,
            view_frac=cfg.val_view_frac,
            n_samples=cfg.calibration_samples,
            **kwargs,
        )

    def _bucket(self) -> _Bucket:
        return _Bucket(self.schema.dims, self.reference is not None)

    def sampled(self) -> bool:
        """Whether the next request is monitored."""
        self.requests_seen += 1
        return self.share > 0 and (self.share >= 1 or bool(self._rng.random() < self.share))

    def observe(self, data: MultiViewData) -> None:
        """Score these instances: drift of their observed values, and calibration on entries and whole
        views hidden from them. `data` is left as it was."""
        from .training import ValidationSet

        self.requests_monitored += 1
        tag = self.seed + self.requests_monitored
        bucket = self._buckets[-1]
        if bucket.instances >= self.window / BUCKETS:
            bucket = self._bucket()
            self._buckets.append(bucket)
        n = data.n_samples
        bucket.instances += n
        scaled = {v: self.schema.scalers[v].transform(np.asarray(data.views[v], np.float64)) for v in self.schema.dims}
        for v, x in scaled.items():
            bucket.present[v] += int(view_present(x).sum())
            c = feature_counts(x, None if self._edges is None else self._edges[v])
            bucket.count[v] += c["count"]
            bucket.sum[v] += c["sum"]
            if bucket.bins is not None:
                bucket.bins[v] += c["bins"]
        batch = self.schema.to_batch(data)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tag)
            val = ValidationSet.from_batch(batch, self.hide_frac, self.view_frac, tag)
            device = _device(self.model)
            sums = hidden_sums(
                self.model, val.corrupted.to(device), val.truth.values, val.hidden, self.n_samples
            )  # fmt: skip
        for v, s in sums.items():
            bucket.scores[v] += s

    def summary(self) -> dict:
        """Per view: state, live calibration and drift beside the training reference; and the settings."""
        ref = self.reference
        buckets = list(self._buckets)
        instances = sum(b.instances for b in buckets)
        views = {}
        for v in self.schema.view_names:
            live = scores_from_sums(sum(b.scores[v] for b in buckets))
            ref_scores = ((ref or {}).get("validation") or {}).get(v) or {}
            calibration = {"rows": live["rows"], "entries": live["entries"]}
            for key in _SCORE_NAMES:
                calibration[key] = {"live": live[key], "reference": ref_scores.get(key)}
            for level in LEVELS:
                calibration[f"coverage_{round(level * 100)}"]["nominal"] = level
            state, bands = coverage_state(live, ref_scores)
            calibration["band"] = bands
            present = sum(b.present[v] for b in buckets)
            drift: dict = {
                "instances": instances,
                "missing_share": {
                    "live": 1.0 - present / instances if instances else None,
                    "reference": None if ref is None else ref["views"][v]["missing_share"],
                },
            }
            if ref is not None:
                r = ref["views"][v]
                count = sum(b.count[v] for b in buckets)
                shift = mean_shift(
                    count,
                    sum(b.sum[v] for b in buckets),
                    np.asarray(r["feature_mean"], np.float64),
                    np.asarray(r["feature_sd"], np.float64),
                )
                p = psi(sum(b.bins[v] for b in buckets), np.asarray(r["bin_shares"], np.float64))
                drift["mean_shift"] = _mean_max(np.abs(shift))
                drift["psi"] = _mean_max(p)
                drift["psi_alert"] = psi_alert(drift["psi"]["mean"])
            views[v] = {"state": state, "calibration": calibration, "drift": drift}
        return {
            "reference": "available" if ref is not None else "unavailable",
            "reference_validation": "available" if ref is not None and ref.get("validation") else "unavailable",
            "space": "scaled",
            "share": self.share,
            "window": self.window,
            "requests_seen": self.requests_seen,
            "requests_monitored": self.requests_monitored,
            "instances_in_window": instances,
            "min_rows": MIN_ROWS,
            "views": views,
        }


def coverage_state(live: Mapping, reference: Mapping) -> tuple[str, dict]:
    """`degraded` when, with at least `MIN_ROWS` scored instances, a live coverage leaves its band
    (reference coverage, else the nominal level, ± max(MIN_BAND, Z_BAND·√(p(1−p)/rows))); else `ok`.
    Also each level's band as (low, high), None before MIN_ROWS."""
    rows = live["rows"]
    state, bands = "ok", {}
    for level in LEVELS:
        key = f"coverage_{round(level * 100)}"
        centre = reference.get(key) if reference.get(key) is not None else level
        if rows < MIN_ROWS or live[key] is None:
            bands[key] = None
            continue
        half = max(MIN_BAND, Z_BAND * math.sqrt(centre * (1 - centre) / rows))
        bands[key] = [centre - half, centre + half]
        if abs(live[key] - centre) > half:
            state = "degraded"
    return state, bands


def psi_alert(value: float | None) -> str | None:
    """The usual reading of a PSI: below 0.1 `none`, to 0.25 `moderate`, above `significant`."""
    if value is None:
        return None
    return "none" if value < 0.1 else "moderate" if value <= 0.25 else "significant"


def _mean_max(a: np.ndarray) -> dict:
    a = a[np.isfinite(a)]
    return {"mean": float(a.mean()), "max": float(a.max())} if a.size else {"mean": None, "max": None}


def _usable_reference(reference: Mapping | None, schema: ViewSchema) -> dict | None:
    """The reference when it fits the schema (this version, every view, the right widths); else None."""
    if not reference or reference.get("version") != REFERENCE_VERSION:
        return None
    views = reference.get("views") or {}
    for v, d in schema.dims.items():
        r = views.get(v)
        if r is None or len(r.get("feature_mean", ())) != d:
            return None
    return dict(reference)


def _device(model) -> torch.device:
    from .models.base import module_device

    return module_device(model)


def table_summary(imputer, data: MultiViewData, max_rows: int = 5000, seed: int = 0) -> dict:
    """The monitoring summary of a table (the batch job's): drift and calibration over its rows, or an
    even random sample of `max_rows` of them (scoring draws 100 completions per row)."""
    n = data.n_samples
    rows = np.arange(n) if n <= max_rows else np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
    monitor = Monitor.for_imputer(imputer, share=1.0, window=max(BUCKETS, len(rows)), seed=seed)
    monitor.sampled()
    monitor.observe(data.subset(rows) if len(rows) < n else data)
    return {**monitor.summary(), "rows": n, "scored_rows": len(rows)}
