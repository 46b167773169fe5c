"""Split-conformal calibration of the draws' central intervals, per view and kind of missing entry.

Scores are stretches of the raw interval about the draws' median (floored by δ); `bounded` views are
scored on their latent draws, before the clamp. The score, the floor, the kinds, the guarantee and
what it assumes: docs/calibration.md.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..likelihoods import BINARY_LIKELIHOODS, BOUNDS, COUNT_LIKELIHOODS
from ..likelihoods import censor as _censor

LEVELS = tuple(round(i / 100, 2) for i in range(1, 100))
SAMPLE_LEVEL = 0.9
DELTA_SHARE = 0.25  # the floor δ as a share of the calibration entries' median raw 90 % half-width
COUNT_DELTA = 0.5  # and at least half a count for count views (raw scale)
# calibration entries per view and kind (a random subset beyond: still exchangeable). 20,000 put the
# 90 % quantile's own sampling error at ±0.002 of coverage (√(0.9·0.1/20,000)) and hold 8 MB of 100
# draws each: a run's memory stops growing with its validation split once it has ~2,000 rows.
MAX_ENTRIES = 20_000
MIN_ENTRIES = 30  # fewer entries of a kind: use the view's pooled scores
KINDS = ("entry", "view")  # missing inside an observed view / the whole view missing


def level_index(level: float) -> int:
    """Index of the smallest grid level ≥ `level` (a `ValueError` outside [0.01, 0.99])."""
    if not LEVELS[0] - 1e-9 <= level <= LEVELS[-1] + 1e-9:
        raise ValueError(f"level must lie in [{LEVELS[0]}, {LEVELS[-1]}], got {level}")
    return min(i for i, lv in enumerate(LEVELS) if lv >= level - 1e-9)


def draw_quantiles(draws: torch.Tensor, levels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Median (N,) and central-interval ends (L, N) of draws (S, N) at each level."""
    lv = torch.as_tensor(levels, dtype=draws.dtype, device=draws.device)
    probs = torch.cat([torch.tensor([0.5], dtype=draws.dtype, device=draws.device), (1 - lv) / 2, (1 + lv) / 2])
    parts = []
    step = max(1, 2**23 // max(1, draws.shape[0] * len(probs)))
    for i in range(0, draws.shape[1], step):  # torch.quantile caps the input size
        parts.append(torch.quantile(draws[:, i : i + step], probs, dim=0))
    q = torch.cat(parts, dim=1)
    n = len(lv)
    return q[0], q[1 : 1 + n], q[1 + n :]


def scores(draws: torch.Tensor, y: torch.Tensor, delta: float, levels=LEVELS, bounds=None) -> torch.Tensor:
    """Nonconformity scores (L, N) of truths y (N,) given draws (S, N). With `bounds` (lo, hi), the
    draws are latent values censored to that range and a truth on a bound stands for any latent value
    beyond it: it is scored as the one nearest the median (0 when the median is past the bound)."""
    m, lo, hi = draw_quantiles(draws, levels)
    if bounds is not None:
        y = torch.where(y <= bounds[0], torch.minimum(y, m), torch.where(y >= bounds[1], torch.maximum(y, m), y))
    up = (y - m) / (hi - m).clamp_min(delta)
    down = (m - y) / (m - lo).clamp_min(delta)
    return torch.where(y > m, up, down).clamp_min(0.0)


def conformal_quantile(s: torch.Tensor, levels=LEVELS) -> torch.Tensor:
    """t̂ per level: the ⌈(n + 1)α⌉-th smallest score of each row of s (L, n); +∞ past n."""
    n = s.shape[1]
    ordered = torch.sort(s, dim=1).values
    out = torch.full((len(levels),), math.inf, dtype=s.dtype, device=s.device)
    for i, a in enumerate(levels):
        k = math.ceil((n + 1) * a)
        if 1 <= k <= n:
            out[i] = ordered[i, k - 1]
    return out


class ConformalCalibration(nn.Module):
    """Per view and kind stretch factors t̂ (V, 2, len(LEVELS)) and floors δ (V, 2), in the model's
    scaled space. `view_missing[v]` (n,) marks the rows whose view v is wholly missing."""

    def __init__(self, views: list[str], likelihoods: list[str]) -> None:
        super().__init__()
        self.views, self.likelihoods = list(views), list(likelihoods)
        self.register_buffer("stretch", torch.ones(len(views), len(KINDS), len(LEVELS)))
        self.register_buffer("delta", torch.zeros(len(views), len(KINDS)))
        self.register_buffer("n_entries", torch.zeros(len(views), len(KINDS), dtype=torch.long))
        self.register_buffer("fitted", torch.tensor(False))

    def calibrates(self, view: str) -> bool:
        return self.likelihoods[self.views.index(view)] not in BINARY_LIKELIHOODS

    def summary(self) -> dict:
        """Plain data: whether fitted, the level grid, and per view whether its draws are calibrated
        and, per kind, the calibration entries, the floor δ (scaled space) and t̂ per level (None: +∞)."""
        fitted = bool(self.fitted)
        views = {}
        for i, v in enumerate(self.views):
            calibrated = fitted and self.calibrates(v) and int(self.n_entries[i].sum()) > 0
            views[v] = {"likelihood": self.likelihoods[i], "calibrated": calibrated}
            if calibrated:
                views[v]["kinds"] = {
                    kind: {
                        "n_entries": int(self.n_entries[i, k]),
                        "delta": float(self.delta[i, k]),
                        "stretch": [t if math.isfinite(t) else None for t in self.stretch[i, k].tolist()],
                    }
                    for k, kind in enumerate(KINDS)
                }
        return {"fitted": fitted, "levels": list(LEVELS), "sample_level": SAMPLE_LEVEL, "views": views}

    @staticmethod
    def _kind_masks(hidden: torch.Tensor, view_missing: torch.Tensor) -> list[torch.Tensor]:
        whole = view_missing.bool()[:, None].expand_as(hidden)
        return [hidden & ~whole, hidden & whole]

    def collect(self, part: tuple[dict, dict, dict, dict], keep: dict | None = None, gen=None) -> dict:
        """The hidden entries of one part (raw draws (S, n, d_v), truths (n, d_v), hidden-entry masks
        (n, d_v), rows whose view is wholly missing (n,)), per (view index, kind): [(draws (S, N),
        truths (N,))]. With `keep[(i, k)]` = p < 1, each entry is kept with probability p (a random
        thinning: the kept entries stay exchangeable), so that parts can be collected a few rows at a
        time in bounded memory."""
        draws, truth, hidden, missing = part
        out: dict = {}
        for i, v in enumerate(self.views):
            if not self.calibrates(v) or v not in hidden:
                continue
            for k, mask in enumerate(self._kind_masks(hidden[v].bool(), missing[v])):
                p = 1.0 if keep is None else keep.get((i, k), 1.0)
                if p < 1.0:
                    mask = mask & (torch.rand(mask.shape, generator=gen) < p).to(mask.device)
                out.setdefault((i, k), []).append((draws[v][:, mask], truth[v][mask]))
        return out

    @staticmethod
    def merge(collected: list[dict]) -> dict:
        """`collect`'s outputs of several parts as one."""
        out: dict = {}
        for c in collected:
            for key, items in c.items():
                out.setdefault(key, []).extend(items)
        return out

    def thinning(self, hidden: list[dict], missing: list[dict]) -> dict:
        """Per (view index, kind), the share of hidden entries `collect` keeps so that about
        1.05 × `MAX_ENTRIES` remain (1 where there are fewer); `fit_collected` then keeps at most
        `MAX_ENTRIES`."""
        totals: dict = {}
        for h, m in zip(hidden, missing, strict=True):
            for i, v in enumerate(self.views):
                if v in h:
                    for k, mask in enumerate(self._kind_masks(h[v].bool(), m[v])):
                        totals[(i, k)] = totals.get((i, k), 0) + int(mask.sum())
        return {key: min(1.0, 1.05 * MAX_ENTRIES / n) for key, n in totals.items() if n > 0}

    @torch.no_grad()
    def fit(self, parts: list[tuple[dict, dict, dict, dict]]) -> None:
        """From a list of (raw draws (S, n, d_v), truths (n, d_v), hidden-entry masks (n, d_v), rows
        whose view is wholly missing (n,)), each a dict over views."""
        self.fit_collected(self.merge([self.collect(p) for p in parts]))

    @torch.no_grad()
    def fit_collected(self, entries: dict) -> None:
        """From `collect`'s (merged) entries."""
        gen = torch.Generator().manual_seed(0)

        def fit_one(x: torch.Tensor, y: torch.Tensor, count: bool, bounds) -> tuple[torch.Tensor, float, int]:
            if y.numel() > MAX_ENTRIES:
                keep = torch.randperm(y.numel(), generator=gen)[:MAX_ENTRIES].to(y.device)
                x, y = x[:, keep], y[keep]
            _, lo, hi = draw_quantiles(x, [SAMPLE_LEVEL])
            delta = DELTA_SHARE * float(((hi[0] - lo[0]) / 2).median())
            if count:
                delta = max(delta, COUNT_DELTA)
            if delta <= 0:
                spread = float(y.std()) if y.numel() > 1 else 1.0
                delta = 0.01 * (spread if spread > 0 else 1.0)
            return conformal_quantile(scores(x, y, delta, bounds=bounds)), delta, y.numel()

        for i in range(len(self.views)):
            xs = [[x for x, _ in entries.get((i, k), [])] for k in range(len(KINDS))]
            ys = [[y for _, y in entries.get((i, k), [])] for k in range(len(KINDS))]
            counts = [sum(y.numel() for y in ys[k]) for k in range(len(KINDS))]
            if sum(counts) < MIN_ENTRIES:
                # too few entries to say anything: at 90 % split conformal needs at least 9, and with
                # a handful its quantile is the largest score or +∞. The view keeps its raw draws.
                warnings.warn(
                    f"view {self.views[i]!r}: {sum(counts)} validation entries (< {MIN_ENTRIES}) to calibrate "
                    "its intervals; it keeps the model's raw draws",
                    stacklevel=3,
                )
                continue
            count = self.likelihoods[i] in COUNT_LIKELIHOODS
            bounds = BOUNDS if self.likelihoods[i] == "bounded" else None
            pooled = fit_one(
                torch.cat([x for k in xs for x in k], 1), torch.cat([y for k in ys for y in k]), count, bounds
            )
            for k in range(len(KINDS)):
                enough = counts[k] >= MIN_ENTRIES
                t, d, n = fit_one(torch.cat(xs[k], 1), torch.cat(ys[k]), count, bounds) if enough else pooled
                self.stretch[i, k], self.delta[i, k], self.n_entries[i, k] = t, d, n
        self.fitted.fill_(True)

    def censor(self, draws: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`bounded` views' latent draws clamped to their range (the censored draws)."""
        return {v: _censor(self.likelihoods[self.views.index(v)], x) for v, x in draws.items()}

    def _finish(self, view: str, x: torch.Tensor) -> torch.Tensor:
        lk = self.likelihoods[self.views.index(view)]
        return x.clamp_min(0) if lk in COUNT_LIKELIHOODS else _censor(lk, x)

    def _per_entry(self, i: int, j: int, view_missing: torch.Tensor, shape, table: torch.Tensor) -> torch.Tensor:
        """The (n, d) value of `table[i, kind, j]` (or `table[i, kind]`) for each entry's kind."""
        vals = table[i, :, j] if table.dim() == 3 else table[i]
        kind = view_missing.bool().long()[:, None].expand(shape)
        return vals.to(view_missing.device)[kind]

    @torch.no_grad()
    def stretch_draws(self, draws: dict[str, torch.Tensor], view_missing: dict[str, torch.Tensor]):
        """Draws whose 90 % central interval is the calibrated one, from latent (uncensored) draws;
        unfitted, the draws censored as they are.

        Each entry's draws are stretched about their median by t̂ at `SAMPLE_LEVEL`. Where a side's
        raw half-width h is below the floor δ (draws all or mostly equal: a count drawn 3 every time,
        a pixel drawn 0), the stretch alone would leave that side at t̂·h, short of the calibrated
        t̂·δ, and the draws would cover less than `interval` says. That side then also gets
        half-Gaussian noise of scale √((t̂δ)² − (t̂h)²) / z₀.₉₅, which puts its 5 % or 95 % quantile at
        m ∓ t̂δ where the draws were all equal (and near it otherwise). Counts are rounded and
        bounded views clipped afterwards, as the raw draws were.
        """
        if not bool(self.fitted):
            return self.censor(draws)
        j = level_index(SAMPLE_LEVEL)
        z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor((1 + SAMPLE_LEVEL) / 2)))
        out = dict(draws)  # each calibrated view is clamped by `_finish` below; binary views need no clamp
        for i, v in enumerate(self.views):
            if v not in draws or not self.calibrates(v):
                continue
            x = draws[v]
            shape = x.shape[1:]
            t = self._per_entry(i, j, view_missing[v], shape, self.stretch).nan_to_num(posinf=1e3)
            d = self._per_entry(i, j, view_missing[v], shape, self.delta).to(x.dtype)
            m, lo, hi = draw_quantiles(x.reshape(x.shape[0], -1), [SAMPLE_LEVEL])
            m, lo, hi = m.reshape(shape), lo[0].reshape(shape), hi[0].reshape(shape)
            y = m + t * (x - m)
            up, down = (hi - m).clamp_min(0), (m - lo).clamp_min(0)
            s_up = t * (d.square() - up.square()).clamp_min(0).sqrt() / z
            s_down = t * (d.square() - down.square()).clamp_min(0).sqrt() / z
            if bool((s_up > 0).any() or (s_down > 0).any()):
                e = torch.randn_like(y)
                y = y + torch.where(e > 0, s_up * e, s_down * e)
            if self.likelihoods[i] in COUNT_LIKELIHOODS:
                y = y.round()
            out[v] = self._finish(v, y)
        return out

    @torch.no_grad()
    def interval(self, view: str, draws: torch.Tensor, level: float, view_missing: torch.Tensor, calibrated=True):
        """(lo, hi) (n, d_v) of the central `level` interval from raw latent draws (S, n, d_v)."""
        i = self.views.index(view)
        j = level_index(level)
        shape = draws.shape[1:]
        m, lo, hi = draw_quantiles(draws.reshape(draws.shape[0], -1), [level])
        m, lo, hi = m.reshape(shape), lo[0].reshape(shape), hi[0].reshape(shape)
        if calibrated and bool(self.fitted) and self.calibrates(view):
            t = self._per_entry(i, j, view_missing, shape, self.stretch)
            d = self._per_entry(i, j, view_missing, shape, self.delta)
            lo = m - t * (m - lo).clamp_min(0).maximum(d)
            hi = m + t * (hi - m).clamp_min(0).maximum(d)
        return self._finish(view, lo), self._finish(view, hi)
