"""Figures logged with every run: training curves, posterior draws, JPVAE's latent correlations.

matplotlib with the Agg backend (no display needed); each function returns a `Figure`.
"""

from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: list[dict]):
    """Training loss (and its parts) and validation RMSE (overall and per view) by epoch."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if not history:
        for ax in axes:
            ax.text(0.5, 0.5, "no epochs", ha="center", va="center")
        return fig
    epochs = [h.get("epoch", i) for i, h in enumerate(history)]
    keys = sorted({k for h in history for k in h})
    ax = axes[0]
    for k in [k for k in keys if k.startswith("train_")]:
        vals = [h.get(k, np.nan) for h in history]
        ax.plot(epochs, vals, label=k.removeprefix("train_"), lw=2 if k == "train_loss" else 1)
    ax.set(xlabel="epoch", ylabel="training objective", title="training")
    ax.legend(fontsize=7)
    ax = axes[1]
    val_keys = [k for k in keys if k.startswith("val_")]
    for k in val_keys:
        ax.plot(epochs, [h.get(k, np.nan) for h in history], label=k, lw=2 if k == "val_rmse" else 1)
    if val_keys:
        best = int(np.nanargmin([h.get("val_rmse", np.nan) for h in history]))
        ax.axvline(epochs[best], color="grey", ls=":", label=f"best epoch {epochs[best]}")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="epoch", ylabel="RMSE on hidden entries (scaled)", title="validation")
    fig.tight_layout()
    return fig


def posterior_draws(imputer, data, n_samples: int = 50, max_rows: int = 4, max_features: int = 32, seed: int = 0):
    """For a few samples, hide one observed view and show the model's draws against the truth.

    Views are hidden in turn (sample i hides view i mod V); dots are draws, the line their mean,
    crosses the hidden true values: a wide cloud that covers the crosses is honest uncertainty."""
    plt = _plt()
    views = list(imputer.schema_.view_names)
    data = imputer.schema_.check(data)
    rows = min(max_rows, data.n_samples)
    fig, axes = plt.subplots(max(rows, 1), 1, figsize=(10, 2.3 * max(rows, 1)), squeeze=False)
    if rows == 0:
        axes[0, 0].text(0.5, 0.5, "no samples", ha="center", va="center")
        return fig
    rng = np.random.default_rng(seed)
    for i in range(rows):
        ax = axes[i, 0]
        observed = [v for v in views if not np.isnan(data.views[v][i]).all()]
        v = (observed or views)[i % len(observed or views)]
        one = data.subset([i]).copy()
        truth = one.views[v][0].copy()
        hidden = {w: a.copy() for w, a in one.views.items()}
        hidden[v][:] = np.nan
        draws = imputer.sample(one.with_views(hidden), n_samples=n_samples)[v][:, 0, :]
        d = min(max_features, draws.shape[1])
        x = np.arange(d)
        jitter = rng.uniform(-0.2, 0.2, size=(draws.shape[0], d))
        ax.scatter((x + jitter).ravel(), draws[:, :d].ravel(), s=4, alpha=0.25, color="tab:blue", label="draws")
        ax.plot(x, draws[:, :d].mean(0), color="tab:blue", lw=1, label="posterior mean")
        ax.scatter(x, truth[:d], marker="x", color="black", s=18, label="hidden truth", zorder=3)
        ax.set_ylabel(f"{v}\n(sample {data.index[i]})", fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels(imputer.schema_.columns[v][:d], rotation=90, fontsize=6)
        if i == 0:
            ax.legend(fontsize=7, loc="upper right")
            ax.set_title(f"{n_samples} posterior draws per hidden view")
    fig.tight_layout()
    return fig


def latent_cross_correlation(model):
    """JPVAE: the prior's Σ_C and the empirical correlation of training encodings (if fitted),
    with the per-view latent blocks marked. None for a model without a joint prior."""
    prior = getattr(model, "prior", None)
    if prior is None or not hasattr(prior, "covariance"):
        return None
    import torch

    plt = _plt()
    with torch.no_grad():
        panels = [("prior Σ_C", prior.covariance().detach().cpu().numpy())]
        if hasattr(model, "cond_fitted") and bool(model.cond_fitted):
            cov = model.cond_cov.detach().cpu().numpy()
            sd = np.sqrt(np.clip(np.diag(cov), 1e-12, None))
            panels.append(("correlation of training encodings", cov / np.outer(sd, sd)))
    dims = list(getattr(prior, "dims", []))
    names = list(getattr(model, "view_names", []))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (title, mat) in zip(axes[0], panels, strict=True):
        im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
        edges = np.cumsum(dims)[:-1] - 0.5
        for e in edges:
            ax.axhline(e, color="black", lw=0.8)
            ax.axvline(e, color="black", lw=0.8)
        if len(names) == len(dims):
            centres = np.cumsum(dims) - np.asarray(dims) / 2 - 0.5
            ax.set_xticks(centres)
            ax.set_xticklabels(names)
            ax.set_yticks(centres)
            ax.set_yticklabels(names)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def sweep_scores(table, params: list[str], metric: str = "score", log_params: tuple[str, ...] = ()):
    """A sweep's score against each swept parameter (one panel each): completed trials as dots, trials
    their scheduler stopped early as crosses, the champion ringed. `table` is the sweep's results
    table (a DataFrame with `params`, `metric`, `completed`, `champion` columns)."""
    plt = _plt()
    params = list(params) or ["trial"]
    fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.6), squeeze=False)
    table = table[np.isfinite(table[metric].to_numpy(dtype=float))]  # trials that failed before a score
    done = table["completed"].astype(bool).to_numpy()
    best = table["champion"].astype(bool).to_numpy()
    y = table[metric].to_numpy(dtype=float)
    for ax, p in zip(axes[0], params, strict=True):
        raw = table[p] if p in table else table.index.to_series()
        numeric = np.issubdtype(np.asarray(raw).dtype, np.number)
        if numeric:
            x = np.asarray(raw, dtype=float)
        else:
            cats = sorted(map(str, set(raw)))
            x = np.array([cats.index(str(v)) for v in raw], dtype=float)
            ax.set_xticks(range(len(cats)), cats)
        ax.scatter(x[done], y[done], s=28, label="completed")
        if (~done).any():
            ax.scatter(x[~done], y[~done], marker="x", s=28, label="stopped early")
        if best.any():
            ax.scatter(x[best], y[best], s=140, facecolors="none", edgecolors="k", label="champion")
        if numeric and p in log_params and (x > 0).any():
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on a short range
        ax.set(xlabel=p.split(".")[-1], ylabel=metric)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig, path) -> None:
    fig.savefig(path, dpi=110)
    _plt().close(fig)
