"""`model="auto"` in the train and tune jobs: each candidate a run of its own, ranked on the final model's
validation score (`final_score`, the score `fit` ranks on), the winner registered with the table.

- `mvimpute train --model auto`: the candidates one after another (cheapest first) as Ray Train runs
  on the data read once, within `budget` seconds (a candidate that would start after it is skipped);
  one MLflow run holds the table (params `auto.*`, metrics `auto.<model>.val_score`) and the winner's
  model, registered as `mvimpute-auto` by default.
- `mvimpute tune --model auto`: one Ray Tune search whose trials are the candidates, each with its
  search space (`tune_spaces/<model>.yaml`, `num_samples` trials; one trial for a model without a
  space), so a cluster runs them side by side; the champion is the best trial of the winning model.

The winner's checkpoint carries the table (`selection`), so `MultiViewImputer.load`, the predictor and
the endpoint's `/metadata` show it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..auto import AutoSettings, pick_winner, without_row_scores
from ..config import TrainJobConfig
from ..engine.search import default_space, load_space


def settings_of(job: TrainJobConfig) -> AutoSettings:
    """The auto settings of a `train` or `tune` job: `cv_folds` is refused (folds are for the in-process fit)."""
    settings = AutoSettings.from_params(job.model_params)
    if settings.cv_folds:
        raise ValueError(
            "cv_folds ranks on folds in-process (MultiViewImputer, mvimpute fit); "
            "train and tune rank each candidate's run on its validation split"
        )
    return settings


def candidate_job(job: TrainJobConfig, name: str, params: Mapping) -> TrainJobConfig:
    """The job config of one candidate: its model and parameters, the rest of `job` unchanged."""
    return job.model_copy(update={"model": name, "model_params": dict(params)})


class CandidateSpace:
    """A search space over candidate models (a `SearchSpace` to the search): a grid over the candidates,
    each with the values its own space samples; `n_trials` trials in all."""

    def __init__(self, entries: list[dict], paths: dict[str, str | None]) -> None:
        self.entries, self.paths = entries, paths
        self.path = "auto: " + ", ".join(f"{m}={p or 'no space'}" for m, p in paths.items())
        self.model = "auto"

    @property
    def n_trials(self) -> int:
        return len(self.entries)

    def keys(self) -> list[str]:
        return ["candidate.model"]

    def swept(self) -> list[str]:
        return ["candidate.model"]

    def log_scale(self) -> tuple[str, ...]:
        return ()

    def uses_grid(self) -> bool:
        return True

    def corners(self) -> list[dict]:
        return [{}]

    def param_space(self) -> dict:
        from ray import tune

        return {"candidate": tune.grid_search(self.entries)}


def candidate_space(job: TrainJobConfig, num_samples: int) -> CandidateSpace:
    """Each candidate with its space from `tune_spaces/<model>.yaml` (`num_samples` trials; the
    candidate's own parameters fixed over it), or one trial where it has none."""
    entries, paths = [], {}
    for name, params in settings_of(job).candidates.items():
        path = default_space(name)
        if path.is_file():
            space = load_space(path, name).param_space()
            model_params = {**space.get("model_params", {}), **params}
            entry = {"model": name, "model_params": model_params, "train": space.get("train", {})}
            entries += [entry] * num_samples
            paths[name] = str(path)
        else:
            entries.append({"model": name, "model_params": dict(params)})
            paths[name] = None
    return CandidateSpace(entries, paths)


def selection_from_table(table, settings: AutoSettings, metric: str) -> tuple[dict, str | None]:
    """(selection table, champion trial id) of an auto sweep: each model's best completed trial on
    `final_score`, the winner by the tie rule."""
    rows, best_trials = [], {}
    for name, params in settings.candidates.items():
        sel = table[table["candidate.model"] == name] if len(table) else table
        done = sel[sel["completed"] & sel["final_score"].notna()] if len(sel) else sel
        row = {"model": name, "params": dict(params), "trials": int(len(sel))}
        if len(done):
            best = done.loc[done["final_score"].idxmin()]
            best_trials[name] = best["trial_id"]
            row.update(val_score=float(best["final_score"]), trial_id=best["trial_id"], status="ok")
            scores = _final_scores_if_local(best.get("checkpoint"))
            row.update(val_rows=scores.get("rows"), view_weight=scores.get("view_weight"))
        else:
            row.update(status="failed" if len(sel) else "not run")
        rows.append(row)
    winner = pick_winner(rows, settings.tie_tolerance, tie_se=settings.tie_se, metric=metric) if best_trials else None
    rows = without_row_scores(rows)
    for r in rows:
        r["winner"] = r["model"] == winner
    selection = {
        "metric": metric,
        "winner": winner,
        "tie_tolerance": settings.tie_tolerance,
        "tie_se": settings.tie_se,
        "budget_seconds": None,
        "cost_order": list(settings.candidates),
        "candidates": rows,
    }
    return selection, best_trials.get(winner)


def add_selection(checkpoint: str | None, selection: dict) -> bool:
    """Write `selection` into a local checkpoint (file or folder); False for a URI or none."""
    if not checkpoint or "://" in str(checkpoint):
        return False
    import torch

    from ..checkpoint import checkpoint_file, read_checkpoint
    from ..files import atomic_write

    path = checkpoint_file(checkpoint)
    state = read_checkpoint(path)
    state["selection"] = selection
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return True


def final_scores(checkpoint) -> dict:
    from ..checkpoint import read_checkpoint

    return dict(read_checkpoint(checkpoint).get("validation") or {})


def _final_scores_if_local(checkpoint) -> dict:
    """A trial's final validation scores (with the per-row ones) from its checkpoint, where this
    process can read it (a local path); empty for a URI or none (its tie then rests on
    `tie_tolerance` alone)."""
    if not isinstance(checkpoint, str) or not checkpoint or "://" in checkpoint:
        return {}
    try:
        return final_scores(checkpoint)
    except (OSError, ValueError):
        return {}


def log_selection(ref, selection: dict) -> None:
    """The table as MLflow params (`auto.winner`, `auto.candidates`, ...) and metrics (`auto.<model>.*`)."""
    from .. import tracking as tr

    params = {
        "auto.winner": selection["winner"],
        "auto.metric": selection["metric"],
        "auto.candidates": ",".join(r["model"] for r in selection["candidates"]),
        "auto.tie_tolerance": selection["tie_tolerance"],
        "auto.tie_se": selection.get("tie_se"),
        "auto.budget_seconds": selection.get("budget_seconds"),
    }
    client = ref.client
    for k, v in params.items():
        client.log_param(ref.run_id, k, str(v))
    metrics = {}
    for r in selection["candidates"]:
        for key in ("val_score", "val_crps", "val_rmse", "fit_seconds", "se_vs_best"):
            v = r.get(key)
            if isinstance(v, int | float) and math.isfinite(v):
                metrics[f"auto.{r['model']}.{key}"] = float(v)
        client.set_tag(ref.run_id, f"auto.{r['model']}.status", r.get("status", ""))
    tr.log_epoch_metrics(ref, metrics, step=0)


__all__ = [
    "CandidateSpace",
    "final_scores",
    "log_selection",
    "settings_of",
    "add_selection",
    "candidate_job",
    "candidate_space",
    "selection_from_table",
]
