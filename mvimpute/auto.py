"""`model="auto"`: fit candidate models, rank them on the self-supervised validation score, keep the winner.

The score is the one that selects epochs (`training.validation_score`: CRPS of `val_samples` raw
draws on the validation split's hidden entries and whole views, or RMSE with `val_score="rmse"`),
computed on each candidate's fitted model (`training.final_validation_score`), on the same split
(every candidate holds out the same rows and hides the same entries). The lowest wins; candidates
within `tie_tolerance` (relative) of it tie, and a tie goes to the cheapest by `COST_ORDER`.

In-process (`MultiViewImputer(model="auto").fit`) the candidates run one after another, cheapest
first, within `budget` seconds: a candidate that starts after the budget is spent is skipped (and
reported so); a deep model is given what is left of the budget and its epochs stop there (best epoch
kept, reported). Candidates are fitted without the conformal calibration; only the winner is
calibrated (on the same split, as its own fit would have), so `auto` costs less than fitting every
candidate on its own. Under `mvimpute tune --model auto` each candidate is a Ray Tune trial instead.

Torch-free at import (the command line reads the names and defaults).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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
AUTO_KEYS = ("candidates", "budget", "tie_tolerance")


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


class AutoSettings:
    """The checked settings of `model="auto"`: candidates (name → params, cheapest first), budget (s), tolerance."""

    def __init__(self, candidates=DEFAULT_CANDIDATES, budget=DEFAULT_BUDGET, tie_tolerance=TIE_TOLERANCE) -> None:
        self.candidates = parse_candidates(candidates)
        self.budget = check_budget(budget)
        self.tie_tolerance = check_tolerance(tie_tolerance)

    @classmethod
    def from_params(cls, params: Mapping) -> AutoSettings:
        unknown = sorted(set(params) - set(AUTO_KEYS))
        if unknown:
            raise ValueError(f"model 'auto' has no parameter(s) {unknown}; it takes {list(AUTO_KEYS)}")
        return cls(**params)

    def as_dict(self) -> dict:
        return {"candidates": self.candidates, "budget": self.budget, "tie_tolerance": self.tie_tolerance}


def pick_winner(rows: Sequence[Mapping], tie_tolerance: float, key: str = "val_score") -> str:
    """The winner of scored rows (`model`, `key`; rows without a finite score are out): the cheapest
    (`COST_ORDER`) of those within `tie_tolerance` × |best| of the lowest score."""
    scored = [r for r in rows if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    if not scored:
        raise ValueError("model 'auto': no candidate produced a validation score")
    best = min(r[key] for r in scored)
    tied = [r for r in scored if r[key] <= best + tie_tolerance * abs(best)]
    return min(tied, key=lambda r: (cost_rank(r["model"]), r[key]))["model"]


def selection_table(rows: Sequence[Mapping], winner: str | None) -> str:
    """The candidates and scores as a plain-text table (the command line's summary)."""
    head = ["model", "val_score", "val_crps", "val_rmse", "fit s", "status"]
    lines = [head]
    for r in rows:

        def num(k, fmt="{:.4g}", r=r):
            v = r.get(k)
            return fmt.format(v) if isinstance(v, int | float) and math.isfinite(v) else "-"

        mark = " *" if r["model"] == winner else ""
        lines.append([r["model"] + mark, num("val_score"), num("val_crps"), num("val_rmse"),
                      num("fit_seconds", "{:.1f}"), r.get("status", "")])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
           for r in lines]  # fmt: skip
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in out)


__all__ = [
    "AUTO",
    "AUTO_KEYS",
    "COST_ORDER",
    "DEFAULT_BUDGET",
    "DEFAULT_CANDIDATES",
    "TIE_TOLERANCE",
    "AutoSettings",
    "cost_rank",
    "parse_candidates",
    "pick_winner",
    "selection_table",
]
