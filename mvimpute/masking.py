"""Corrupt multi-view data with known truth: MCAR entries, whole views, MAR, additive noise.

Every function returns a `Corrupted`: the corrupted data, the untouched truth, and the entries
this corruption hid (already-missing entries are never counted as hidden).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .data.multiview import MultiViewData, as_multiview


@dataclass
class Corrupted:
    data: MultiViewData
    truth: MultiViewData
    hidden: dict[str, np.ndarray]

    def then(self, step) -> Corrupted:
        """Apply another corruption on top, keeping the original truth and the union of hidden."""
        nxt = step(self.data)
        return Corrupted(nxt.data, self.truth, {v: self.hidden[v] | nxt.hidden[v] for v in self.hidden})


def _check_rate(rate: float, name: str = "rate") -> None:
    if not 0 <= rate < 1:
        raise ValueError(f"{name} must lie in [0, 1), got {rate}")


def _views(data: MultiViewData, views) -> list[str]:
    if views is None:
        return data.view_names
    unknown = sorted(set(views) - set(data.views))
    if unknown:
        raise ValueError(f"unknown view(s) {unknown}; views are {data.view_names}")
    return list(views)


def _apply(data: MultiViewData, hide: Mapping[str, np.ndarray]) -> Corrupted:
    out, hidden = {}, {}
    for v, a in data.views.items():
        h = hide.get(v, np.zeros(a.shape, dtype=bool)) & ~np.isnan(a)
        out[v] = np.where(h, np.nan, a)
        hidden[v] = h
    return Corrupted(data.with_views(out), data, hidden)


def mcar(data, rate: float, seed: int = 0, views=None) -> Corrupted:
    """Hide each observed entry independently with probability `rate`."""
    data = as_multiview(data)
    _check_rate(rate)
    rng = np.random.default_rng(seed)
    chosen = _views(data, views)
    return _apply(data, {v: rng.random(data.views[v].shape) < rate for v in chosen})


def drop_views(data, rate: float, seed: int = 0, views=None) -> Corrupted:
    """Each sample loses each view with probability `rate`; a sample never loses all its views."""
    data = as_multiview(data)
    _check_rate(rate)
    rng = np.random.default_rng(seed)
    chosen = _views(data, views)
    present = np.stack([data.masks[v].any(1) for v in data.view_names], 1)  # (n, V)
    drop = np.zeros_like(present)
    col = {v: i for i, v in enumerate(data.view_names)}
    for v in chosen:
        drop[:, col[v]] = rng.random(data.n_samples) < rate
    drop &= present
    lost_all = present.any(1) & ~(present & ~drop).any(1)
    for i in np.flatnonzero(lost_all):
        keep = rng.choice(np.flatnonzero(present[i] & drop[i]))
        drop[i, keep] = False
    return _apply(data, {v: np.repeat(drop[:, col[v]][:, None], data.dims[v], 1) for v in data.view_names})


def hide_view(data, view: str, rows=None) -> Corrupted:
    """Hide the whole of `view` for `rows` (all rows by default)."""
    data = as_multiview(data)
    _views(data, [view])
    sel = np.zeros(data.n_samples, dtype=bool)
    sel[np.arange(data.n_samples) if rows is None else np.asarray(rows)] = True
    return _apply(data, {view: np.repeat(sel[:, None], data.dims[view], 1)})


def mar(data, rate: float, seed: int = 0, driver: str | None = None, strength: float = 2.0) -> Corrupted:
    """Missing at random: entries of every view but `driver` are hidden with probability
    sigmoid(strength·s_i + b_j), s_i a standardised summary of the sample's observed driver
    values, b_j per column chosen so that column's expected rate equals `rate`. The driver view
    (the first by default) stays as it is, so missingness depends only on observed values.
    """
    data = as_multiview(data)
    _check_rate(rate)
    driver = driver or data.view_names[0]
    _views(data, [driver])
    rng = np.random.default_rng(seed)
    a = data.views[driver]
    w = rng.normal(size=a.shape[1])
    col_mean, col_std = np.nanmean(a, 0), np.nanstd(a, 0) + 1e-8
    z = np.where(np.isnan(a), 0.0, (a - col_mean) / col_std) @ w
    s = (z - z.mean()) / (z.std() + 1e-8)
    hide = {}
    for v in data.view_names:
        if v == driver or rate == 0:
            continue
        d = data.dims[v]
        logits_base = strength * s[:, None] * rng.choice([-1.0, 1.0], size=d)[None, :]
        b = np.array([_intercept(logits_base[:, j], rate) for j in range(d)])
        p = 1.0 / (1.0 + np.exp(-(logits_base + b)))
        hide[v] = rng.random(p.shape) < p
    return _apply(data, hide)


def _intercept(logits: np.ndarray, rate: float) -> float:
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(logits + mid)))) < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def add_noise(data, std: float, seed: int = 0, views=None, clip: tuple[float, float] | None = None) -> Corrupted:
    """Add N(0, std²) noise to the observed entries; the truth stays clean. Nothing is hidden."""
    data = as_multiview(data)
    if std < 0:
        raise ValueError(f"noise std must be ≥ 0, got {std}")
    rng = np.random.default_rng(seed)
    chosen = set(_views(data, views))
    out = {}
    for v, a in data.views.items():
        x = a + rng.normal(scale=std, size=a.shape) if v in chosen else a.copy()
        out[v] = np.clip(x, *clip) if clip is not None else x
    return Corrupted(data.with_views(out), data, {v: np.zeros(a.shape, dtype=bool) for v, a in data.views.items()})


def corrupt(
    data,
    *,
    mcar_rate: float = 0.0,
    view_rate: float = 0.0,
    mar_rate: float = 0.0,
    noise_std: float = 0.0,
    seed: int = 0,
) -> Corrupted:
    """Whole views, then MAR, then MCAR entries, then noise on what stays observed."""
    out = Corrupted(
        as_multiview(data),
        as_multiview(data),
        {v: np.zeros(a.shape, bool) for v, a in as_multiview(data).views.items()},
    )
    if view_rate:
        out = out.then(lambda d: drop_views(d, view_rate, seed))
    if mar_rate:
        out = out.then(lambda d: mar(d, mar_rate, seed + 1))
    if mcar_rate:
        out = out.then(lambda d: mcar(d, mcar_rate, seed + 2))
    if noise_std:
        out = out.then(lambda d: add_noise(d, noise_std, seed + 3))
    return out
