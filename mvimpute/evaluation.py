"""Mask-and-score evaluation: generative models against classic imputers on the same masks.

For each seed, mechanism and rate: split the samples, hide entries of both splits by the
mechanism, fit every method on the corrupted training split, score on the corrupted test split
against its truth. Downstream classification (when labels exist) trains a classifier on imputed
training data and tests it on imputed test data; for multiple imputers each of several draws
is classified and the majority vote taken (TAE paper §4.2).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from . import masking
from .baselines import BASELINES
from .config import parse_override
from .data.datasets import load_dataset
from .data.multiview import MultiViewData
from .imputer import MultiViewImputer
from .models import MODEL_REGISTRY
from .scoring import hidden_entries, interval_scores, score

MECHANISMS = ("mcar", "view", "mar")
CALIBRATION_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SUMMARY_METRICS = (
    "rmse",
    "mae",
    "crps",
    "coverage_50",
    "coverage_90",
    "width_90",
    "crps_raw",
    "coverage_90_raw",
    "accuracy",
    "eval_elbo",
    "fit_seconds",
)


def hide(data: MultiViewData, mechanism: str, rate: float, seed: int) -> masking.Corrupted:
    if mechanism == "mcar":
        return masking.mcar(data, rate, seed)
    if mechanism == "view":
        return masking.drop_views(data, rate, seed)
    if mechanism == "mar":
        return masking.mar(data, rate, seed)
    raise ValueError(f"unknown mechanism {mechanism!r}; choose one of {MECHANISMS}")


def _wide(views: Mapping[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(views[v]) for v in names], axis=-1)


def downstream_accuracy(imputer, train: MultiViewData, y_train, test: MultiViewData, y_test, n_draws: int = 5) -> float:
    """Accuracy of a classifier trained on imputed `train` and tested on imputed `test`;
    multiple imputers vote over `n_draws` classified draws of the test data."""
    from sklearn.linear_model import LogisticRegression

    names = train.view_names
    clf = LogisticRegression(max_iter=2000).fit(_wide(imputer.transform(train.views), names), y_train)
    if hasattr(imputer, "sample"):
        draws = imputer.sample(test.views, n_samples=n_draws)
        x = _wide(draws, names)  # (S, n, D)
        votes = np.stack([clf.predict(x[s]) for s in range(x.shape[0])])
        pred = np.array([np.bincount(col.astype(int)).argmax() for col in votes.T])
    else:
        pred = clf.predict(_wide(imputer.transform(test.views), names))
    return float(np.mean(pred == np.asarray(y_test)))


def raw_draw_scores(imp: MultiViewImputer, test: MultiViewData, corrupted: masking.Corrupted, n_samples: int) -> dict:
    """`crps_raw`, `coverage_90_raw`, `width_90_raw`: interval scores of uncalibrated draws on the hidden entries."""
    draws = imp.sample(corrupted.data.views, n_samples=n_samples, calibrated=False)
    hidden = hidden_entries(test, corrupted.data)
    x = np.concatenate([np.asarray(draws[v])[:, h] for v, h in hidden.items() if h.any()], axis=1)
    y = np.concatenate([test.views[v][h] for v, h in hidden.items() if h.any()])
    return {f"{k}_raw": val for k, val in interval_scores(x, y, (0.9,)).items() if k != "coverage_50"}


def check_grid(
    models: Mapping[str, Mapping],
    baselines: Sequence[str],
    mechanisms: Sequence[str],
    rates: Sequence[float],
    seeds: Sequence[int],
) -> None:
    """A `ValueError` naming the first unknown baseline, model, model parameter, mechanism or bad rate."""
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}")
    for name, params in models.items():
        params = dict(params)
        kind = params.pop("model", name)
        if kind not in MODEL_REGISTRY:
            raise ValueError(f"unknown model {kind!r}; choose from {sorted(MODEL_REGISTRY)}")
        try:
            MultiViewImputer(kind, progress=False, **params)
        except (TypeError, ValueError) as err:
            raise ValueError(f"model {name!r}: {err}") from None
    for m in mechanisms:
        if m not in MECHANISMS:
            raise ValueError(f"unknown mechanism {m!r}; choose one of {MECHANISMS}")
    for r in rates:
        if not 0.0 < r < 1.0:
            raise ValueError(f"rate {r!r} is not in (0, 1)")
    if not (baselines or models):
        raise ValueError("nothing to evaluate: no model and no baseline given")
    if not (mechanisms and rates and seeds):
        raise ValueError("the grid is empty: give at least one mechanism, rate and seed")


def evaluate(
    data: MultiViewData,
    models: Mapping[str, Mapping] | None = None,
    baselines: tuple[str, ...] = ("column-mean", "knn", "mice", "missforest"),
    mechanisms: tuple[str, ...] = ("mcar", "view"),
    rates: tuple[float, ...] = (0.2, 0.5),
    seeds: tuple[int, ...] = (0, 1, 2),
    n_samples: int = 100,
    test_frac: float = 0.2,
    label: str | None = None,
    out_dir: str | Path = "outputs/evaluate",
    progress: bool = True,
    on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run the grid and write `results.json`, `results.md`, `score_vs_rate.png`, `calibration.png`.

    `models` maps a label to `MultiViewImputer` keyword arguments (`{"model": "jpvae", ...}`).
    Names and parameters are checked (`check_grid`) before anything is fitted or written.
    """
    models = dict(models if models is not None else {"jpvae": {"model": "jpvae"}, "tae": {"model": "tae"}})
    labels = None
    if label is not None:
        if data.obs is None or label not in data.obs:
            raise ValueError(f"no label column {label!r} in the data's obs")
        labels = data.obs[label].to_numpy()
    check_grid(models, baselines, mechanisms, rates, seeds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods: dict[str, Callable[[], object]] = {name: BASELINES[name] for name in baselines}
    for name, params in models.items():
        params = dict(params)
        kind = params.pop("model", name)
        methods[name] = lambda kind=kind, params=params: MultiViewImputer(kind, progress=False, **params)
    grid = [(s, m, r, name) for s in seeds for m in mechanisms for r in rates for name in methods]
    rows: list[dict] = []
    bar = tqdm(grid, disable=not progress, desc="evaluate", unit="fit")
    for seed, mech, rate, name in bar:
        bar.set_postfix(method=name, mechanism=mech, rate=rate, seed=seed)
        perm = np.random.default_rng(seed).permutation(data.n_samples)
        n_test = int(round(test_frac * data.n_samples))
        tr_idx, te_idx = np.sort(perm[n_test:]), np.sort(perm[:n_test])
        train, test = data.subset(tr_idx), data.subset(te_idx)
        c_train = hide(train, mech, rate, seed).data
        c_test = hide(test, mech, rate, seed + 10_000)
        imp = methods[name]()
        t0 = time.perf_counter()
        imp.fit(c_train)
        fit_s = time.perf_counter() - t0
        row = {"method": name, "mechanism": mech, "rate": rate, "seed": seed, "fit_seconds": fit_s}
        row.update(score(imp, test, c_test.data, n_samples=n_samples, levels=CALIBRATION_LEVELS, eval_elbo_steps=500))
        if isinstance(imp, MultiViewImputer):  # the same scores from the raw (uncalibrated) draws
            row.update(raw_draw_scores(imp, test, c_test, n_samples))
        if labels is not None:
            row["accuracy"] = downstream_accuracy(imp, c_train, labels[tr_idx], c_test.data, labels[te_idx])
        rows.append(row)
        if on_result is not None:
            on_result(row)
        (out_dir / "results.json").write_text(json.dumps(rows, indent=1))
    (out_dir / "results.md").write_text(results_table(rows) + "\n")
    score_vs_rate_figure(rows, out_dir / "score_vs_rate.png")
    calibration_figure(rows, out_dir / "calibration.png")
    return rows


OUTPUT_FILES = ("results.json", "results.md", "score_vs_rate.png", "calibration.png")


def load_data(source: str | MultiViewData) -> MultiViewData:
    """An embedded data set name, optionally with its size arguments as `name:key=value,key=value`
    (e.g. `synthetic-omics:n_samples=40`), or a dataset spec YAML (read with Ray Data, collected on
    the driver)."""
    if isinstance(source, MultiViewData):
        return source
    if str(source).endswith((".yaml", ".yml")):
        from .data.ray_data import read_spec

        return read_spec(source).to_multiview()
    name, sep, args = str(source).partition(":")
    kwargs = {}
    for item in filter(None, args.split(",")) if sep else ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"data {source!r}: expected NAME:key=value[,key=value], got {item!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    try:
        return load_dataset(name, **kwargs)
    except TypeError as err:
        raise ValueError(f"data {source!r}: {err}") from None


def model_grid(models: Sequence[str], params: Sequence[str] = (), epochs: int | None = None) -> dict[str, dict]:
    """`MultiViewImputer` keyword arguments per model from registry names and `MODEL.key=value` items
    (YAML values, e.g. `tae.C=15`, `jpvae.hidden=[64,64]`); `epochs` for every model unless a param sets it."""
    out: dict[str, dict] = {}
    for m in models:
        if m not in MODEL_REGISTRY:
            raise ValueError(f"unknown model {m!r}; choose from {sorted(MODEL_REGISTRY)}")
        out[m] = {"model": m} | ({"epochs": epochs} if epochs is not None else {})
    for item in params:
        try:
            keys, value = parse_override(item)  # the job config's `key.path=value` (YAML values)
        except ValueError as err:
            raise ValueError(f"param {err}") from None
        if len(keys) != 2 or keys[0] not in out or not keys[1]:
            raise ValueError(f"param {item!r}: expected MODEL.key=value with MODEL one of {list(out)}")
        if keys[1] == "model":
            raise ValueError(f"param {item!r}: the model kind is set by the model's name")
        out[keys[0]][keys[1]] = value
    return out


def summary_metrics(rows: Sequence[dict], metrics: Sequence[str] = SUMMARY_METRICS) -> dict[str, float]:
    """`<metric>/<method>/<mechanism>/<rate>` → mean over seeds, for every metric present and finite."""
    out: dict[str, float] = {}
    cells = dict.fromkeys((r["method"], r["mechanism"], r["rate"]) for r in rows)
    for meth, mech, rate in cells:
        sel = [r for r in rows if (r["method"], r["mechanism"], r["rate"]) == (meth, mech, rate)]
        for m in metrics:
            xs = [float(r[m]) for r in sel if r.get(m) is not None and np.isfinite(r[m])]
            if xs:
                out[f"{m}/{meth}/{mech}/{rate:g}"] = float(np.mean(xs))
    return out


class EvaluationInputError(ValueError):
    """A bad name, parameter or data source given to `run_evaluation` (raised before any fit)."""


@dataclass
class EvaluationResult:
    rows: list[dict]
    out_dir: Path
    wall_seconds: float
    run_id: str | None = None
    tracking_uri: str | None = None


def run_evaluation(
    data: str | MultiViewData = "synthetic-omics",
    models: Sequence[str] = ("jpvae", "tae"),
    params: Sequence[str] = (),
    epochs: int | None = 100,
    baselines: Sequence[str] = ("column-mean", "knn", "mice", "missforest"),
    mechanisms: Sequence[str] = ("mcar", "view"),
    rates: Sequence[float] = (0.2, 0.5),
    seeds: Sequence[int] = (0, 1, 2),
    n_samples: int = 100,
    label: str | None = None,
    out_dir: str | Path = "outputs/evaluate",
    tracking_uri: str | None = None,
    mlflow: bool | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """The `mvimpute evaluate` / `jobs/evaluate.py` call: build the grid from names, run `evaluate`, and
    log one MLflow run when `mlflow` is true, or when it is None and a tracking URI is given or
    `MLFLOW_TRACKING_URI` is set. Bad names, parameters or data are `EvaluationInputError`s
    (a `ValueError`) raised before anything is fitted."""
    baselines, mechanisms = tuple(baselines), tuple(mechanisms)
    rates, seeds = tuple(float(r) for r in rates), tuple(int(s) for s in seeds)
    try:
        grid = model_grid(models, params, epochs)
        check_grid(grid, baselines, mechanisms, rates, seeds)
        frame = load_data(data)
        if label is not None and (frame.obs is None or label not in frame.obs):
            raise ValueError(f"no label column {label!r} in the data's obs")
    except ValueError as err:
        raise EvaluationInputError(str(err)) from err
    track = mlflow if mlflow is not None else bool(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    on_result = None
    if progress:

        def on_result(row: dict) -> None:
            shown = [f"{k} {row[k]:.4g}" for k in ("rmse", "crps", "coverage_90", "accuracy") if k in row]
            tqdm.write(
                f"{row['method']} {row['mechanism']} rate {row['rate']:g} seed {row['seed']}: "
                f"{', '.join(shown)} (fit {row['fit_seconds']:.1f} s)"
            )

    t0 = time.perf_counter()
    rows = evaluate(
        frame,
        grid,
        baselines,
        mechanisms,
        rates,
        seeds,
        n_samples=n_samples,
        label=label,
        out_dir=out_dir,
        progress=progress,
        on_result=on_result,
    )
    result = EvaluationResult(rows, Path(out_dir), time.perf_counter() - t0)
    if track:
        from . import tracking

        config = {
            "data": data if isinstance(data, str) else "in-memory",
            "data_samples": frame.n_samples,
            "views": {v: frame.dims[v] for v in frame.view_names},
            "models": grid,
            "baselines": ",".join(baselines),
            "mechanisms": ",".join(mechanisms),
            "rates": ",".join(f"{r:g}" for r in rates),
            "seeds": ",".join(str(s) for s in seeds),
            "epochs": epochs,
            "n_samples": n_samples,
            "label": label,
        }
        metrics = summary_metrics(rows) | {"wall_seconds": result.wall_seconds}
        run = tracking.log_evaluation(
            config, metrics, [result.out_dir / f for f in OUTPUT_FILES], tracking_uri=tracking_uri
        )
        result.run_id, result.tracking_uri = run.run_id, run.tracking_uri
    return result


def _mean_sd(xs) -> str:
    xs = np.asarray([x for x in xs if x is not None and np.isfinite(x)], dtype=float)
    if xs.size == 0:
        return "–"
    return f"{xs.mean():.3f} ± {xs.std(ddof=1) if xs.size > 1 else 0.0:.3f}"


def results_table(
    rows: list[dict], metrics=("rmse", "crps", "coverage_90", "width_90", "crps_raw", "coverage_90_raw", "accuracy")
) -> str:
    """Markdown: one line per mechanism, rate and method; mean ± sd over seeds."""
    metrics = [m for m in metrics if any(m in r for r in rows)]
    head = "| mechanism | rate | method | " + " | ".join(metrics) + " |"
    lines = [head, "|" + "---|" * (3 + len(metrics))]
    keys = sorted({(r["mechanism"], r["rate"]) for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for mech, rate in keys:
        for meth in methods:
            sel = [r for r in rows if (r["mechanism"], r["rate"], r["method"]) == (mech, rate, meth)]
            if sel:
                cells = [_mean_sd([r.get(m) for r in sel]) for m in metrics]
                lines.append(f"| {mech} | {rate:g} | {meth} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def score_vs_rate_figure(rows: list[dict], path: Path, metric: str = "rmse") -> None:
    plt = _plt()
    mechs = list(dict.fromkeys(r["mechanism"] for r in rows))
    fig, axes = plt.subplots(1, len(mechs), figsize=(4.5 * len(mechs), 3.6), squeeze=False)
    for ax, mech in zip(axes[0], mechs, strict=True):
        for meth in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["mechanism"] == mech and r["method"] == meth]
            rates = sorted({r["rate"] for r in sel})
            mean = [np.mean([r[metric] for r in sel if r["rate"] == q]) for q in rates]
            sd = [np.std([r[metric] for r in sel if r["rate"] == q]) for q in rates]
            ax.errorbar(rates, mean, yerr=sd, marker="o", capsize=3, label=meth)
        ax.set_title(f"{mech}")
        ax.set_xlabel("missing rate")
        ax.set_ylabel(metric)
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def calibration_figure(rows: list[dict], path: Path) -> None:
    """Nominal vs empirical coverage of central intervals, per method with draws (all rows pooled)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    for meth in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == meth and "coverage_90" in r]
        if not sel:
            continue
        emp = [np.mean([r[f"coverage_{round(q * 100)}"] for r in sel]) for q in CALIBRATION_LEVELS]
        ax.plot(CALIBRATION_LEVELS, emp, marker="o", label=meth)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("empirical coverage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
