"""Mask-and-score: how well an imputer recovers entries whose truth is known."""

from __future__ import annotations

import numpy as np
import scoringrules as sr

from .data.multiview import MultiViewData, as_multiview

LEVELS = (0.5, 0.9)


def hidden_entries(truth: MultiViewData, corrupted: MultiViewData) -> dict[str, np.ndarray]:
    """Entries missing in `corrupted` whose truth is known."""
    if set(truth.views) != set(corrupted.views):
        raise ValueError(f"truth views {truth.view_names} differ from corrupted views {corrupted.view_names}")
    out = {}
    for v in truth.views:
        if truth.views[v].shape != corrupted.views[v].shape:
            raise ValueError(
                f"view {v!r}: truth {truth.views[v].shape} and corrupted {corrupted.views[v].shape} differ in shape"
            )
        out[v] = np.isnan(corrupted.views[v]) & ~np.isnan(truth.views[v])
    return out


def interval_scores(draws: np.ndarray, y: np.ndarray, levels=LEVELS) -> dict[str, float]:
    """Coverage and width of central intervals, CRPS (ensemble form); draws (S, k), y (k,)."""
    out: dict[str, float] = {}
    for level in levels:
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        pct = int(round(level * 100))
        out[f"coverage_{pct}"] = float(np.mean((y >= lo) & (y <= hi)))
        out[f"width_{pct}"] = float(np.mean(hi - lo))
    out["crps"] = float(np.mean(sr.crps_ensemble(y, draws, m_axis=0)))
    return out


def energy_score_rows(draws: dict[str, np.ndarray], truth: MultiViewData, hidden: dict[str, np.ndarray]) -> float:
    """Mean over rows with hidden entries of the energy score of the joint draw of those entries."""
    views = list(hidden)
    scores = []
    for i in range(truth.n_samples):
        ys = [truth.views[v][i, hidden[v][i]] for v in views]
        if sum(len(y) for y in ys) == 0:
            continue
        y = np.concatenate(ys)
        x = np.concatenate([draws[v][:, i, hidden[v][i]] for v in views], axis=1)
        scores.append(float(sr.es_ensemble(y, x)))
    return float(np.mean(scores)) if scores else float("nan")


def score(
    imputer,
    truth,
    corrupted,
    n_samples: int = 100,
    energy: bool = False,
    eval_elbo_steps: int = 1000,
    levels: tuple[float, ...] = LEVELS,
) -> dict[str, float]:
    """Score `imputer` on the entries hidden in `corrupted` (NaN there, known in `truth`).

    Point metrics (RMSE, MAE; summed BCE per sample for binary views) use `transform`;
    interval coverage/width at 50 % and 90 % and CRPS use `n_samples` draws from `sample` when
    the imputer has one. Keys: overall `rmse`, per view `rmse/<view>`, and so on. For models
    with the q(z|y) q(x|z) posterior (TAE, MVAE, MIWAE), `eval_elbo` is the evaluation ELBO
    (a bound on log q(x_truth | y), per sample, in the model's scaled space) fitted for
    `eval_elbo_steps` steps; 0 skips it.
    """
    truth, corrupted = as_multiview(truth), as_multiview(corrupted)
    hidden = hidden_entries(truth, corrupted)
    n_hidden = sum(int(h.sum()) for h in hidden.values())
    if n_hidden == 0:
        raise ValueError("nothing to score: no entry is missing in `corrupted` and known in `truth`")
    filled = imputer.transform(corrupted.views)
    out: dict[str, float] = {"n_hidden": float(n_hidden)}
    errs = []
    for v, h in hidden.items():
        if not h.any():
            continue
        e = np.asarray(filled[v])[h] - truth.views[v][h]
        errs.append(e)
        out[f"rmse/{v}"] = float(np.sqrt(np.mean(e**2)))
        out[f"mae/{v}"] = float(np.mean(np.abs(e)))
        if truth.likelihoods.get(v) in ("bernoulli", "binary", "bounded"):  # data in [0, 1]
            p = np.clip(np.asarray(filled[v], dtype=np.float64), 1e-7, 1 - 1e-7)
            y = np.nan_to_num(truth.views[v])
            bce = -(y * np.log(p) + (1 - y) * np.log1p(-p)) * h
            rows = h.any(1)
            out[f"bce/{v}"] = float(bce.sum(1)[rows].mean())
            mse = float(np.mean(e**2))
            out[f"psnr/{v}"] = float(10 * np.log10(1.0 / max(mse, 1e-12)))
    e = np.concatenate(errs)
    out["rmse"] = float(np.sqrt(np.mean(e**2)))
    out["mae"] = float(np.mean(np.abs(e)))
    if hasattr(imputer, "sample") and n_samples:
        draws = imputer.sample(corrupted.views, n_samples=n_samples)
        per_view = {}
        for v, h in hidden.items():
            if h.any():
                per_view[v] = interval_scores(np.asarray(draws[v])[:, h], truth.views[v][h], levels)
                out.update({f"{k}/{v}": val for k, val in per_view[v].items()})
        all_draws = np.concatenate([np.asarray(draws[v])[:, h] for v, h in hidden.items() if h.any()], axis=1)
        out.update(
            interval_scores(
                all_draws, np.concatenate([truth.views[v][h] for v, h in hidden.items() if h.any()]), levels
            )
        )
        if energy:
            out["energy_score"] = energy_score_rows(draws, truth, hidden)
    model = getattr(imputer, "model_", None)
    if model is not None:
        from .models.base import module_device

        device = module_device(model)
        truth_batch = imputer.schema_.to_batch(imputer.schema_.check(truth)).to(device)
        if hasattr(model, "active_units"):
            au = model.active_units(truth_batch)
            out.update({f"active_units/{v}": a for v, a in au.items()})
            out["active_units"] = float(np.nanmean(list(au.values())))
        if hasattr(model, "posterior_x_given_z") and eval_elbo_steps:
            from .models.eval_elbo import evaluation_elbo

            corrupted_batch = imputer.schema_.to_batch(imputer.schema_.check(corrupted)).to(device)
            out["eval_elbo"] = evaluation_elbo(model, truth_batch, corrupted_batch, steps=eval_elbo_steps)
    return out
