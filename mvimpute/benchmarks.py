"""Reproducible measurements behind the README's result and benchmark tables."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from . import masking
from .baselines import mean_imputer
from .data import load_dataset
from .imputer import MultiViewImputer
from .scoring import score

JPVAE_PAPER = dict(hidden=(512, 512), latent_dim=20, batch_size=32, lr=1e-3)


def _mean_sd(xs) -> str:
    xs = np.asarray(xs, dtype=float)
    return f"{xs.mean():.2f} ± {xs.std(ddof=1) if len(xs) > 1 else 0.0:.2f}"


def _write(out_dir: Path, name: str, rows: list[dict], table: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(rows, indent=2))
    (out_dir / f"{name}.md").write_text(table + "\n")


def digit_figure(path: Path, panels: dict[str, np.ndarray], title: str = "") -> Path:
    """A grid of 8×8 digits: one row per panel name, one column per sample (values in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(panels)
    n = panels[names[0]].shape[0]
    fig, axes = plt.subplots(len(names), n, figsize=(1.1 * n + 1.4, 1.1 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c in range(n):
            ax = axes[r, c]
            img = panels[name][c].reshape(8, 8)
            ax.imshow(np.ma.masked_invalid(img), cmap="gray_r", vmin=0, vmax=1)
            ax.set_facecolor("#e8b0b0")  # missing pixels show pink
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def jpvae_priors(
    seeds: tuple[int, ...] = (0, 1, 2),
    priors: tuple[str, ...] = ("independent", "svd", "orthogonal"),
    epochs: int = 60,
    out_dir: str | Path = "outputs/bench",
    figure: str | Path | None = "docs/img/jpvae_digits.png",
    progress: bool = True,
) -> list[dict]:
    """JPVAE's half-image protocol on digits-halves: impute one half from the other on a held-out
    test split (20 %), summed BCE of the imputed half and active units, per prior and seed."""
    data = load_dataset("digits-halves")
    rows = []
    shown = {}
    for seed in seeds:
        train, test = data.split(0.2, seed=seed)
        base = mean_imputer().fit(train)
        for prior in priors:
            imp = MultiViewImputer("jpvae", prior=prior, epochs=epochs, seed=seed, progress=progress, **JPVAE_PAPER)
            imp.fit(train)
            row = {"prior": prior, "seed": seed, "fit_seconds": imp.fit_seconds_, "best_epoch": imp.best_epoch_}
            for hidden, given in (("top", "bottom"), ("bottom", "top")):
                corrupted = masking.hide_view(test, hidden).data
                s = score(imp, test, corrupted, n_samples=50)
                row[f"bce_{hidden}_from_{given}"] = s[f"bce/{hidden}"]
                row[f"rmse_{hidden}_from_{given}"] = s["rmse"]
                row[f"coverage90_{hidden}_from_{given}"] = s["coverage_90"]
                row["active_units"] = s["active_units"]
                if seed == seeds[0] and hidden == "bottom":
                    shown[prior] = imp
            rows.append(row)
            print(json.dumps(row), flush=True)
        for hidden, given in (("top", "bottom"), ("bottom", "top")):
            s = score(base, test, masking.hide_view(test, hidden).data, n_samples=0)
            rows.append({"prior": "column-mean", "seed": seed, f"bce_{hidden}_from_{given}": s[f"bce/{hidden}"]})
    table = ["| prior | BCE top ← bottom | BCE bottom ← top | active units | fit s |", "|---|---|---|---|---|"]
    for prior in (*priors, "column-mean"):
        sel = [r for r in rows if r["prior"] == prior]
        top = _mean_sd([r["bce_top_from_bottom"] for r in sel if "bce_top_from_bottom" in r])
        bot = _mean_sd([r["bce_bottom_from_top"] for r in sel if "bce_bottom_from_top" in r])
        au = _mean_sd([100 * r["active_units"] for r in sel]) + " %" if prior != "column-mean" else "–"
        fit = _mean_sd([r["fit_seconds"] for r in sel]) if prior != "column-mean" else "–"
        table.append(f"| {prior} | {top} | {bot} | {au} | {fit} |")
    text = "\n".join(table)
    _write(Path(out_dir), "jpvae_priors", rows, text)
    if figure and shown:
        train, test = data.split(0.2, seed=seeds[0])
        pick = np.arange(8)
        sub = test.subset(pick)
        corrupted = masking.hide_view(sub, "bottom").data
        panels = {
            "truth": np.concatenate([sub.views["top"], sub.views["bottom"]], 1),
            "given": np.concatenate([sub.views["top"], corrupted.views["bottom"]], 1),
        }
        for prior, imp in shown.items():
            mean = imp.transform(corrupted)
            draws = imp.sample(corrupted.views, n_samples=2)
            panels[f"{prior}\nmean"] = np.concatenate([mean.views["top"], mean.views["bottom"]], 1)
            panels[f"{prior}\ndraw"] = np.concatenate([draws["top"][0], draws["bottom"][0]], 1)
        digit_figure(Path(figure), panels, "JPVAE: bottom half imputed from the top half (test digits)")
    print(text)
    return rows


def fit_time(epochs: int = 30, repeats: int = 3, out_dir: str | Path = "outputs/bench") -> dict:
    """Wall time of `MultiViewImputer(model="jpvae").fit` on digits-halves for a fixed number of epochs."""
    data = load_dataset("digits-halves")
    times = []
    for r in range(repeats):
        imp = MultiViewImputer("jpvae", epochs=epochs, patience=None, seed=r, progress=False)
        t0 = time.perf_counter()
        imp.fit(data)
        times.append(time.perf_counter() - t0)
    res = {
        "epochs": epochs,
        "n_samples": data.n_samples,
        "config": {k: v for k, v in imp.train_config.__dict__.items()},
        "seconds": times,
        "per_epoch_ms": [1000 * t / epochs for t in times],
        "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
    }
    text = f"fit {epochs} epochs on digits-halves (n={data.n_samples}): {_mean_sd(times)} s"
    _write(Path(out_dir), "fit_time", [res], text)
    print(text)
    return res
