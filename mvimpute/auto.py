"""`model="auto"`: fit candidate models, rank them on the self-supervised validation score, keep the winner.

The score is the one that selects epochs (`training.validation_score`: CRPS of raw draws on the
validation split's hidden entries and whole views, or RMSE with `val_score="rmse"`), computed on
each candidate's fitted model with at least `training.RANK_SAMPLES` (100) draws
(`training.final_validation_score`: fewer would favour narrow predictive distributions), on the same split
(every candidate holds out the same rows and hides the same entries). The lowest wins; candidates
within `tie_tolerance` (relative) of it tie, and a tie goes to the cheapest by `COST_ORDER`. With
`tie_se` > 0, so do candidates within that many standard errors of their paired difference to the
best (the one-standard-error rule of model selection); off by default: on the evaluate grid at 40
and 100 samples it sent close calls to the cheaper KNN over MICE and lost accuracy (docs/auto.md).

In-process (`MultiViewImputer(model="auto").fit`) the candidates run one after another, cheapest
first, within `budget` seconds: a candidate that starts after the budget is spent is skipped (and
reported so); a deep model is given what is left of the budget and its epochs stop there (best epoch
kept, reported). Candidates are fitted without the conformal calibration; only the winner is
calibrated (on the same split, as its own fit would have), so `auto` costs less than fitting every
candidate on its own. Under `mvimpute tune --model auto` each candidate is a Ray Tune trial instead.

`cv_folds` = K ≥ 2 (in-process only; 0, off, by default) ranks on K folds instead of the one split:
each candidate is fitted K times, each time with one fold of the rows as its validation data, and
its score is pooled over the K folds' hidden entries (every row is a validation row once); the
winner is then fitted once more as without folds (its own split, calibrated). For small data, where
one split holds a handful of rows; it costs about K + 1 fits of each candidate.

Torch-free at import (the command line reads the names and defaults).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .names import AUTO

# why each default is in: `mean` is the floor auto must never lose to (and wins on tiny, structureless
# data); `knn` is the strongest local, nonparametric imputer (digits); `mice` the linear-Gaussian
# conditional model (wins where views are linear in each other); `jpvae` the nonlinear multi-view
# model with joint latent structure (wins on manifolds). TAE, MVAE and MIWAE are left out by default
# (they cost as much as JPVAE and did not beat it on the evaluate grids); name them to add them.
# MICE regresses each column on at most 20 others (scikit-learn's `n_nearest_features`): with all 129
# it took 215-241 s on synthetic-omics (docs/classic.md), more than the rest together.
DEFAULT_CANDIDATES = {"mean": {}, "knn": {}, "mice": {"n_nearest_features": 20}, "jpvae": {}}
# cheapest first: what a tie goes to, and the order the in-process candidates run in
COST_ORDER = ("mean", "knn", "mice", "jpvae", "mvae", "miwae", "tae")
DEFAULT_BUDGET = 1800.0  # seconds, in-process
TIE_TOLERANCE = 0.01  # relative: within 1 % of the best score is a tie
# within this many standard errors of the paired difference to the best score is a tie (the
# standard error from the per-row scores on the shared validation split). 0, off, by default: with
# 1.0 (the one-standard-error rule) auto lost RMSE and CRPS on the evaluate grid at n = 40 and 100,
# as "cheaper" (KNN) is not "safer" than MICE there (docs/auto.md)
TIE_SE = 0.0
# folds of the rows to rank on (in-process); 0: the one validation split of the candidates' own fit
CV_FOLDS = 0
AUTO_KEYS = ("candidates", "budget", "tie_tolerance", "tie_se", "cv_folds")


def parse_candidates(candidates) -> dict[str, dict]:
    """Candidate names (a list, or one comma-separated string) or a mapping name → model parameters,
    as {name: params} in `COST_ORDER`; a bad value is a `ValueError` naming `candidates`."""
    from .models import MODEL_REGISTRY
    from .models.base import config_from_kwargs

    if isinstance(candidates, str):
        candidates = [c.strip() for c in candidates.split(",") if c.strip()]
    if isinstance(candidates, Mapping):
        items = {str(k): dict(v or {}) for k, v in candidates.items()}
        for name, params in candidates.items():
            if params is not None and not isinstance(params, Mapping):
                raise ValueError(f"candidates: the parameters of {name!r} must be a mapping, got {params!r}")
    elif isinstance(candidates, Sequence):
        items = {}
        for c in candidates:
            if not isinstance(c, str):
                raise ValueError(f"candidates: a candidate is a model name, got {c!r}")
            items[c] = {}
    else:
        raise ValueError(f"candidates must be a list of model names or a mapping name → parameters, got {candidates!r}")
    if not items:
        raise ValueError(f"candidates is empty: name at least one model (default {DEFAULT_CANDIDATES})")
    for name, params in items.items():
        if name == AUTO:
            raise ValueError("candidates: 'auto' cannot be one of its own candidates")
        if name not in MODEL_REGISTRY:
            raise ValueError(f"candidates: unknown model {name!r}; choose from {sorted(MODEL_REGISTRY)}")
        try:
            config_from_kwargs(MODEL_REGISTRY[name].config_class, params, name)
        except (TypeError, ValueError) as err:
            raise ValueError(f"candidates: {err}") from None
    return {name: items[name] for name in sorted(items, key=cost_rank)}


def cost_rank(name: str) -> int:
    return COST_ORDER.index(name) if name in COST_ORDER else len(COST_ORDER)


def check_budget(budget) -> float | None:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0 or math.isnan(budget):
        raise ValueError(f"budget must be a number of seconds > 0 (or null: none), got {budget!r}")
    return float(budget)


def check_tolerance(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 <= tol < 1:
        raise ValueError(f"tie_tolerance must be a number in [0, 1), got {tol!r}")
    return float(tol)


def check_tie_se(tie_se) -> float:
    if isinstance(tie_se, bool) or not isinstance(tie_se, int | float) or not 0 <= tie_se < math.inf:
        raise ValueError(f"tie_se must be a number of standard errors >= 0, got {tie_se!r}")
    return float(tie_se)


def check_cv_folds(folds) -> int:
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 0 or folds == 1:
        raise ValueError(f"cv_folds must be 0 (one validation split) or a whole number of folds >= 2, got {folds!r}")
    return int(folds)


class AutoSettings:
    """The checked settings of `model="auto"`: candidates (name → params, cheapest first), budget (s),
    the tie rule (relative tolerance, standard errors), the folds to rank on."""

    def __init__(
        self,
        candidates=DEFAULT_CANDIDATES,
        budget=DEFAULT_BUDGET,
        tie_tolerance=TIE_TOLERANCE,
        tie_se=TIE_SE,
        cv_folds=CV_FOLDS,
    ) -> None:
        self.candidates = parse_candidates(candidates)
        self.budget = check_budget(budget)
        self.tie_tolerance = check_tolerance(tie_tolerance)
        self.tie_se = check_tie_se(tie_se)
        self.cv_folds = check_cv_folds(cv_folds)

    @classmethod
    def from_params(cls, params: Mapping) -> AutoSettings:
        unknown = sorted(set(params) - set(AUTO_KEYS))
        if unknown:
            raise ValueError(f"model 'auto' has no parameter(s) {unknown}; it takes {list(AUTO_KEYS)}")
        return cls(**params)

    def as_dict(self) -> dict:
        return {
            "candidates": self.candidates,
            "budget": self.budget,
            "tie_tolerance": self.tie_tolerance,
            "tie_se": self.tie_se,
            "cv_folds": self.cv_folds,
        }


def fold_rows(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """K folds of `n` rows (a permutation by `seed`, cut in K parts of sizes differing by at most one),
    each sorted; a `ValueError` where a fold would hold fewer than 2 rows."""
    if n < 2 * folds:
        raise ValueError(f"cv_folds={folds} needs at least {2 * folds} samples (2 validation rows per fold), got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, folds)]


def paired_standard_error(
    a: Mapping | None, b: Mapping | None, metric: str, view_weight: float | None = None
) -> float | None:
    """Standard error of score(a) − score(b), both scored on the same hidden validation entries, from
    their per-row sums (`training.validation_score(per_row=True)`'s `rows`: `crps`, `sse`, `count`).

    The rows are the independent units (a row's entries share its latent and its neighbours): with
    d_r the difference of the two row sums over the R rows holding hidden entries and N entries in
    all, the difference of the mean CRPS is Σ d_r / N and its standard error √(R · var(d)) / N. For
    RMSE the same is taken of the squared errors and carried through RMSE_a − RMSE_b =
    (MSE_a − MSE_b) / (RMSE_a + RMSE_b). With `view_weight` w (the score that ranks,
    `training.mix_of_kinds`), each row's difference is w · its whole-view part / the whole-view
    entries + (1 − w) · the rest / the other entries. None where either lacks the rows, or they hide
    different entries."""
    import numpy as np

    key = {"val_crps": "crps", "val_rmse": "sse"}.get(metric)
    if not a or not b or key is None or key not in a or key not in b:
        return None
    count_a, count_b = np.asarray(a["count"]), np.asarray(b["count"])
    if count_a.shape != count_b.shape or not np.array_equal(count_a, count_b):
        return None
    held = count_a > 0
    n_rows = int(held.sum())
    if n_rows < 2:
        return None

    def per_row(r: Mapping) -> np.ndarray:
        """Each row's share of the score (the score is their sum)."""
        total = np.asarray(r[key], dtype=np.float64)
        views = np.asarray(r.get(f"{key}_views", np.zeros_like(total)), dtype=np.float64)
        n_views = float(np.sum(r.get("count_views", 0)))
        n_entries = float(np.sum(r["count"])) - n_views
        if view_weight is None or n_views == 0 or n_entries == 0 or f"{key}_views" not in r:
            return total / float(np.sum(r["count"]))
        return view_weight * views / n_views + (1 - view_weight) * (total - views) / n_entries

    da, db = per_row(a), per_row(b)
    d = (da - db)[held]
    se = math.sqrt(n_rows * float(np.var(d, ddof=1)))
    if key == "sse":
        rmse_sum = math.sqrt(np.sum(da)) + math.sqrt(np.sum(db))
        se = se / rmse_sum if rmse_sum > 0 else math.inf
    return se


def pick_winner(
    rows: Sequence[Mapping],
    tie_tolerance: float,
    key: str = "val_score",
    tie_se: float = 0.0,
    metric: str = "val_crps",
) -> str:
    """The winner of scored rows (`model`, `key`; rows without a finite score are out): the cheapest
    (`COST_ORDER`) of those within `tie_tolerance` × |best| of the lowest score, or within `tie_se`
    standard errors of their paired difference to it (`paired_standard_error` of the rows'
    `val_rows`, on `metric`). Each scored row gets `se_vs_best` (None where unknown)."""
    scored = [r for r in rows if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    if not scored:
        raise ValueError("model 'auto': no candidate produced a validation score")
    best_row = min(scored, key=lambda r: r[key])
    best = best_row[key]
    tied = []
    weight = best_row.get("view_weight")
    for r in scored:
        pair = (r.get("val_rows"), best_row.get("val_rows"))
        se = 0.0 if r is best_row else paired_standard_error(*pair, metric, weight)
        if isinstance(r, dict):
            r["se_vs_best"] = se
        margin = max(tie_tolerance * abs(best), tie_se * se if se is not None else 0.0)
        if r[key] <= best + margin:
            tied.append(r)
    return min(tied, key=lambda r: (cost_rank(r["model"]), r[key]))["model"]


def without_row_scores(rows: Sequence[Mapping]) -> list[dict]:
    """The rows without their per-row validation scores (kept out of tables, checkpoints, MLflow)."""
    return [{k: v for k, v in r.items() if k != "val_rows"} for r in rows]


def selection_table(rows: Sequence[Mapping], winner: str | None) -> str:
    """The candidates and scores as a plain-text table (the command line's summary)."""
    head = ["model", "val_score", "se vs best", "val_crps", "val_rmse", "fit s", "status"]
    lines = [head]
    for r in rows:

        def num(k, fmt="{:.4g}", r=r):
            v = r.get(k)
            return fmt.format(v) if isinstance(v, int | float) and math.isfinite(v) else "-"

        mark = " *" if r["model"] == winner else ""
        lines.append([r["model"] + mark, num("val_score"), num("se_vs_best", "{:.2g}"), num("val_crps"),
                      num("val_rmse"), num("fit_seconds", "{:.1f}"), r.get("status", "")])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
           for r in lines]  # fmt: skip
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in out)


__all__ = [
    "AUTO",
    "AUTO_KEYS",
    "COST_ORDER",
    "DEFAULT_BUDGET",
    "DEFAULT_CANDIDATES",
    "TIE_SE",
    "TIE_TOLERANCE",
    "CV_FOLDS",
    "AutoSettings",
    "cost_rank",
    "fold_rows",
    "paired_standard_error",
    "parse_candidates",
    "pick_winner",
    "selection_table",
    "without_row_scores",
]
