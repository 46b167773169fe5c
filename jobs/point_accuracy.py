"""JPVAE's point accuracy on digits-halves with one half of each test row hidden (docs/jpvae.md,
"Point imputation: the conditional mean, decoded once").

The split: `MultiViewData.split(0.2, seed)` (20 % test rows); each test row loses its top or its
bottom half (a fair coin per row, seeded by seed + 10000); every method is fitted on the complete
training rows through the public API and scored by `mvimpute.scoring.score` on the hidden halves:
RMSE of `transform` (and its ratio to the column mean's RMSE), and the 90 % coverage and CRPS of
100 draws from `sample` (calibrated, as users get them).

A method is a name with options, `name[:key=value[:key=value]]`: `jpvae` with any `MultiViewImputer`
keyword (`jpvae:val_score=rmse`, `jpvae:epochs=30`) or `likelihood=` for both views
(`jpvae:likelihood=bernoulli`); `mean`, `knn` (k = 10) and `mice` (`IterativeImputer`, 10 rounds,
10 draws); `mvi-mean`, `mvi-knn`, `mvi-mice`: the project's classic models (`MultiViewImputer`, with
their calibrated draws, so coverage and CRPS are scored too). JPVAE runs with `prior="orthogonal"`,
its defaults and `seed` unless given (the defaults before α = 0.99 and 32 latents:
`jpvae:alpha=0.95:latent_dim=20`).

`--diagnose` scores, on each fitted JPVAE, the point imputation computed several ways from the
same weights (the draws do not change): the decoders' means averaged over 128 shared latent draws
(the point imputation before this page's fix), the decoded conditional latent mean with Σ̂ of the
encoder means or of the means plus the encoders' variance, and with the bounded views' censored
mean or the clamped decoder location. `--speed N` times `transform` against the 128/8/1-draw
averages on N rows (digits-halves repeated, half the rows missing the bottom view) of a 5-epoch
model: rows per second, median of 3 alternated runs.

Run (seed 0, every hypothesis; about 10 min on one core):
    OMP_NUM_THREADS=1 python jobs/point_accuracy.py --seeds 0 --diagnose \\
        --methods jpvae jpvae:likelihood=bernoulli jpvae:likelihood=gaussian jpvae:val_score=rmse knn mean mice
Speed:
    OMP_NUM_THREADS=1 python jobs/point_accuracy.py --speed 10782 --methods
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import mvimpute as mvi
from mvimpute import scoring
from mvimpute.baselines import knn_imputer, mean_imputer, mice_imputer
from mvimpute.data.multiview import MultiViewData
from mvimpute.models import likelihoods as lk
from mvimpute.models.jpvae import gaussian_conditional

JPVAE_DEFAULTS = {"prior": "orthogonal", "progress": False}


def half_split(seed: int) -> tuple[MultiViewData, MultiViewData, MultiViewData]:
    """(train, clean test, test with each row's top or bottom half hidden)."""
    data = mvi.load_dataset("digits-halves")
    train, test = data.split(0.2, seed=seed)
    top = np.random.default_rng(seed + 10000).random(test.n_samples) < 0.5
    views = {
        "top": np.where(top[:, None], np.nan, test.views["top"]),
        "bottom": np.where(~top[:, None], np.nan, test.views["bottom"]),
    }
    return train, test, test.with_views(views)


def parse_method(spec: str) -> tuple[str, dict]:
    name, *opts = spec.split(":")
    return name, {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in opts)}


def build(name: str, opts: dict, seed: int):
    if name.startswith("mvi-"):  # a registered classic model through the API: calibrated draws too
        return mvi.MultiViewImputer(name.removeprefix("mvi-"), seed=seed, progress=False, **opts)
    if name == "mean":
        return mean_imputer()
    if name == "knn":
        return knn_imputer(10)
    if name == "mice":
        return mice_imputer(n_draws=10, max_iter=10)
    params = {**JPVAE_DEFAULTS, "seed": seed, **opts}
    lik = params.pop("likelihood", None)
    likelihoods = {"top": lik, "bottom": lik} if lik else None
    return mvi.MultiViewImputer(name, likelihoods=likelihoods, **params)


def rmse_of(filled: dict, test: MultiViewData, hidden: dict) -> float:
    err = np.concatenate([np.asarray(filled[v])[h] - test.views[v][h] for v, h in hidden.items()])
    return float(np.sqrt(np.mean(err**2)))


# ----------------------------------------------------------------------------- the hypotheses


@torch.no_grad()
def encoder_moments(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, Cov of the encoder means, mean encoder variance) over the complete training rows:
    Σ̂ before the calibration work was Cov(μ); since, Cov(μ) + diag(E σ²)."""
    mus, logvars = model.encode(batch)
    complete = model.observed_views(batch).all(1)
    mu = torch.cat(mus, -1)[complete]
    var = torch.cat(logvars, -1).exp()[complete]
    centred = mu - mu.mean(0)
    return mu.mean(0), centred.T @ centred / (mu.shape[0] - 1), var.mean(0)


@torch.no_grad()
def conditional_latents(model, batch, mean, gain_cov, n_draws=None, spread=None, on_draws=False, seed=0):
    """Per-view latents (S, n, k) with each missing view from z_M | a: the conditional mean with the
    gain of `gain_cov`; with `n_draws`, plus N(0, `spread`) noise (shared by every row), and with
    `on_draws`, `a` drawn from the observed views' encoders instead of their means."""
    mus, logvars = model.encode(batch)
    observed = model.observed_views(batch)
    s = 1 if n_draws is None else n_draws
    gen = torch.Generator().manual_seed(seed)
    out = []
    for mu, lv in zip(mus, logvars, strict=True):
        z = mu.expand(s, *mu.shape).clone()
        if on_draws:
            z = z + torch.randn(s, 1, mu.shape[-1], generator=gen) * torch.exp(0.5 * lv)
        out.append(z)
    n_views = len(model.view_infos)
    for pattern in torch.unique(observed, dim=0):
        if pattern.all() or not pattern.any():
            continue
        rows = (observed == pattern).all(1)
        obs_v = [v for v in range(n_views) if pattern[v]]
        miss_v = [v for v in range(n_views) if not pattern[v]]
        o_idx, m_idx = model.prior.indices(obs_v), model.prior.indices(miss_v)
        a = torch.cat([out[v][:, rows] for v in obs_v], -1)
        cmean, _ = gaussian_conditional(mean, gain_cov, o_idx, m_idx, a.reshape(-1, a.shape[-1]))
        z = cmean.reshape(s, -1, cmean.shape[-1])
        if n_draws is not None and spread is not None:
            sub = spread[m_idx][:, m_idx]
            chol = torch.linalg.cholesky(sub + 1e-6 * torch.eye(len(m_idx)))
            z = z + torch.randn(s, 1, len(m_idx), generator=gen) @ chol.T
        start = 0
        for v in miss_v:
            k = model.prior.dims[v]
            out[v][:, rows] = z[..., start : start + k]
            start += k
    return out


@torch.no_grad()
def decoded_mean(model, zs, clamp_location=False) -> dict[str, torch.Tensor]:
    """The decoders' means averaged over the leading draw dimension (`clamp_location`: a bounded
    view's decoder location clamped to [0, 1] instead of its censored mean)."""
    out = {}
    for info, z in zip(model.view_infos, zs, strict=True):
        raw = model.decode(info.name, z)
        if clamp_location and info.likelihood == "bounded":
            m = raw.chunk(2, dim=-1)[0].clamp(*lk.BOUNDS)
        else:
            m = lk.mean(info.likelihood, raw)
        out[info.name] = m.mean(0)
    return out


@torch.no_grad()
def mc_mean(model, batch, n_z: int) -> dict[str, torch.Tensor]:
    """The point imputation before the fix: decoders' means over `n_z` shared draws of the model's
    own conditional (Σ̂ with the encoders' variance, conditioned on draws of the observed latents)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        zs = model.latents(batch, n_z, common_noise=True)
    return decoded_mean(model, zs)


@torch.no_grad()
def diagnose(imp, train: MultiViewData, test: MultiViewData, corrupted: MultiViewData, hidden: dict) -> dict:
    """RMSE of the point imputation computed several ways from the same fitted JPVAE."""
    model = imp.model_.eval()
    train_batch = imp.schema_.to_batch(imp.schema_.check(train))
    _, batch = imp._prepare(corrupted.views)
    mean, cov_mu, var = encoder_moments(model, train_batch)
    cov_total = cov_mu + torch.diag(var)
    out = {}

    def score(name: str, est: dict[str, torch.Tensor]) -> None:
        filled = model.keep_observed(batch, est)
        arrays = imp.schema_.inverse({v: t.cpu().numpy() for v, t in filled.items()})
        out[name] = rmse_of(arrays, test, hidden)

    fitted = model.latent_gaussian()
    out["sigma_matches_model"] = float((fitted[1] - cov_total).abs().max())
    score("mc128 (shared draws, Σ̂ total, on draws)", mc_mean(model, batch, 128))
    score("mc128 independent draws", _independent_mc(model, batch, 128))
    score("plug-in, Σ̂ total", decoded_mean(model, conditional_latents(model, batch, mean, cov_total)))
    score("plug-in, Σ̂ = Cov(μ)", decoded_mean(model, conditional_latents(model, batch, mean, cov_mu)))
    score(
        "mc128, Σ̂ total, on means",
        decoded_mean(model, conditional_latents(model, batch, mean, cov_total, 128, _schur(cov_total, model))),
    )
    score(
        "mc128, gain of Cov(μ), spread Var(z_M | x_O)",
        decoded_mean(model, conditional_latents(model, batch, mean, cov_mu, 128, _schur_mu(cov_mu, var, model))),
    )
    score(
        "plug-in, Σ̂ = Cov(μ), clamped location",
        decoded_mean(model, conditional_latents(model, batch, mean, cov_mu), clamp_location=True),
    )
    return out


def _schur(cov, model) -> torch.Tensor:
    """Σ_MM − Σ_MO Σ_OO⁻¹ Σ_OM for each two-view pattern, as one block-diagonal matrix over the
    latents (the missing view's block is the one `conditional_latents` reads)."""
    k = model.prior.dims[0]
    out = torch.zeros_like(cov)
    for m, o in ((slice(0, k), slice(k, 2 * k)), (slice(k, 2 * k), slice(0, k))):
        s_oo, s_mo = cov[o, o], cov[m, o]
        out[m, m] = cov[m, m] - s_mo @ torch.linalg.solve(s_oo, s_mo.T)
    return 0.5 * (out + out.T)


def _schur_mu(cov_mu, var, model) -> torch.Tensor:
    """Var(z_M | x_O) = Cov(μ_M) − G Cov(μ_O, μ_M) + diag(E σ²_M), G the regression of μ_M on μ_O."""
    return _schur(cov_mu, model) + torch.diag(var)


@torch.no_grad()
def _independent_mc(model, batch, n_z: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        zs = model.latents(batch, n_z)
    return decoded_mean(model, zs)


# ----------------------------------------------------------------------------- speed


def speed(n_rows: int, repeats: int = 3) -> dict[str, float]:
    """Rows per second of `transform`, of the model's point imputation alone (`impute_mean`, chunks of
    4,096 rows as `transform` passes them) and of the 128/8/1-draw averages on `n_rows` rows (half
    missing the bottom view) of a 5-epoch default JPVAE; median of `repeats` alternated runs."""
    data = mvi.load_dataset("digits-halves")
    imp = mvi.MultiViewImputer("jpvae", epochs=5, progress=False, seed=0).fit(data)
    reps = -(-n_rows // data.n_samples)
    views = {v: np.concatenate([data.views[v]] * reps)[:n_rows].copy() for v in data.view_names}
    views["bottom"][::2] = np.nan
    _, batch = imp._prepare(views)
    model = imp.model_.eval()
    runs = {
        "transform": lambda: imp.transform(views),
        "impute_mean": lambda: [
            model.impute_mean(batch.select(slice(i, i + 4096))) for i in range(0, len(batch), 4096)
        ],
        "mc128": lambda: _chunked(model, batch, 128),
        "mc8": lambda: _chunked(model, batch, 8),
        "mc1": lambda: _chunked(model, batch, 1),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: n_rows / statistics.median(t) for k, t in times.items()}


def _chunked(model, batch, n_z: int) -> None:
    for i in range(0, len(batch), 4096):
        mc_mean(model, batch.select(slice(i, i + 4096)), n_z)


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", nargs="*", default=["jpvae", "knn", "mean"], help="methods (see the docstring)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--n-samples", type=int, default=100, help="draws for coverage and CRPS")
    p.add_argument("--diagnose", action="store_true", help="score the point imputation several ways per JPVAE")
    p.add_argument("--speed", type=int, default=0, metavar="N", help="time the point imputation on N rows")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    results: list[dict] = []
    for seed in args.seeds:
        train, test, corrupted = half_split(seed)
        hidden = scoring.hidden_entries(test, corrupted)
        base = rmse_of(mean_imputer().fit(train).transform(corrupted.views), test, hidden)
        for spec in args.methods:
            name, opts = parse_method(spec)
            t0 = time.perf_counter()
            imp = build(name, opts, seed).fit(train)
            fit_s = time.perf_counter() - t0
            s = scoring.score(imp, test, corrupted, n_samples=args.n_samples, eval_elbo_steps=0)
            row = {
                "method": spec,
                "seed": seed,
                "rmse": s["rmse"],
                "ratio": s["rmse"] / base,
                "coverage_90": s.get("coverage_90"),
                "crps": s.get("crps"),
                "best_epoch": getattr(imp, "best_epoch_", None),
                "fit_s": fit_s,
            }
            if args.diagnose and hasattr(imp, "model_") and imp.model_name == "jpvae":
                row["diagnose"] = {
                    k: (v / base if k != "sigma_matches_model" else v)
                    for k, v in diagnose(imp, train, test, corrupted, hidden).items()
                }
            results.append(row)
            cov = "–" if row["coverage_90"] is None else f"{row['coverage_90']:.3f}"
            crps = "–" if row["crps"] is None else f"{row['crps']:.4f}"
            print(
                f"seed {seed} {spec:40s} RMSE/mean {row['ratio']:.3f}  RMSE {row['rmse']:.4f}  cov90 {cov}  "
                f"CRPS {crps}  best epoch {row['best_epoch']}  fit {fit_s:.0f} s",
                flush=True,
            )
            for k, v in row.get("diagnose", {}).items():
                print(f"    {k:48s} {v:.3f}", flush=True)
    if args.speed:
        rates = speed(args.speed)
        results.append({"speed_rows_per_s": rates, "rows": args.speed})
        print("rows/s (median of 3):", {k: round(v) for k, v in rates.items()}, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
