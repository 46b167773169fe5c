"""Mask-and-score evaluation: generative models against classic imputers on the same masks.

For each seed, mechanism and rate: split the samples, hide entries of both splits by the
mechanism, fit every method on the corrupted training split, score on the corrupted test split
against its truth. Downstream classification (when labels exist) trains a classifier on imputed
training data and tests it on imputed test data; for multiple imputers each of several draws
is classified and the majority vote taken (TAE paper §4.2).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import masking
from .baselines import BASELINES
from .data.multiview import MultiViewData
from .imputer import MultiViewImputer
from .scoring import score

MECHANISMS = ("mcar", "view", "mar")
CALIBRATION_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


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
    """
    models = dict(models or {"jpvae": {"model": "jpvae"}, "tae": {"model": "tae"}})
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}")
    for m in mechanisms:
        if m not in MECHANISMS:
            raise ValueError(f"unknown mechanism {m!r}; choose one of {MECHANISMS}")
    labels = None
    if label is not None:
        if data.obs is None or label not in data.obs:
            raise ValueError(f"no label column {label!r} in the data's obs")
        labels = data.obs[label].to_numpy()
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


def _mean_sd(xs) -> str:
    xs = np.asarray([x for x in xs if x is not None and np.isfinite(x)], dtype=float)
    if xs.size == 0:
        return "–"
    return f"{xs.mean():.3f} ± {xs.std(ddof=1) if xs.size > 1 else 0.0:.3f}"


def results_table(rows: list[dict], metrics=("rmse", "crps", "coverage_90", "width_90", "accuracy")) -> str:
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
