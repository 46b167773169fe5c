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
import time
from collections.abc import Mapping

from ..auto import AutoSettings, pick_winner
from ..config import TrainJobConfig
from ..engine.search import default_space, load_space


def settings_of(job: TrainJobConfig) -> AutoSettings:
    return AutoSettings.from_params(job.model_params)


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
        else:
            row.update(status="failed" if len(sel) else "not run")
        rows.append(row)
    winner = pick_winner(rows, settings.tie_tolerance) if best_trials else None
    for r in rows:
        r["winner"] = r["model"] == winner
    selection = {
        "metric": metric,
        "winner": winner,
        "tie_tolerance": settings.tie_tolerance,
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


def run_auto_train(job: TrainJobConfig, echo: bool = True):
    """`mvimpute train --model auto`: each candidate a Ray Train run on the data read once; the winner's
    checkpoint gets the table; one MLflow run logs the table and registers the winner."""
    from ..auto import selection_table
    from ..engine.callbacks import EpochLines, run_with_callbacks
    from ..engine.resources import plan_worker_resources
    from ..engine.runner import prepare_for, read_data, run_training, start_ray
    from .train import TrainJobResult, check_data, given_keys, job_request, summary_lines, tracking_callback

    check_data(job)
    settings = settings_of(job)
    if job.resume_from:
        raise ValueError("resume_from: model 'auto' fits every candidate anew; resume a candidate's run by its model")
    base = job_request(job)
    res = base.resources
    per_worker = plan_worker_resources(
        res.num_workers, res.use_gpu, res.per_worker, start_ray(), res.wait_for_resources
    )
    rmv = read_data(job.data, base.likelihoods, base.scalings)
    n = rmv.dataset.count()
    prepared = None
    run_name = job.run_name or f"auto-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.perf_counter()
    rows, results = [], {}
    for name, params in settings.candidates.items():
        elapsed = time.perf_counter() - t0
        row = {"model": name, "params": dict(params)}
        if settings.budget is not None and rows and elapsed >= settings.budget:
            row.update(status="skipped", note=f"the budget of {settings.budget:g} s was spent ({elapsed:.0f} s)")
            rows.append(row)
            continue
        cj = candidate_job(job, name, params)
        request = job_request(cj).sized_for(n, given_keys(cj)).with_storage(run_name=f"{run_name}-{name}")
        if prepared is None:  # the split, scaling and data are the same for every candidate
            prepared = prepare_for(request, rmv)
        if echo:
            print(f"candidate {name}", flush=True)
        callbacks = [EpochLines(request.train.epochs)] if echo else []
        c0 = time.perf_counter()
        result = run_training(request, prepared, callbacks, worker_resources=per_worker)
        scores = _final_scores(result.checkpoint_path)
        row.update(
            val_score=scores.get("val_score", math.nan),
            val_crps=scores.get("val_crps", math.nan),
            val_rmse=scores.get("val_rmse", math.nan),
            fit_seconds=time.perf_counter() - c0,
            epochs_run=len(result.history),
            best_epoch=result.best_epoch,
            status="ok",
            run_name=result.run_name,
        )
        rows.append(row)
        results[name] = result
    winner = pick_winner(rows, settings.tie_tolerance)
    for r in rows:
        r["winner"] = r["model"] == winner
    result = results[winner]
    selection = {
        "metric": f"val_{base.train.val_score}",
        "winner": winner,
        "tie_tolerance": settings.tie_tolerance,
        "budget_seconds": settings.budget,
        "cost_order": list(settings.candidates),
        "seconds": time.perf_counter() - t0,
        "candidates": rows,
    }
    add_selection(str(result.checkpoint_path), selection)
    tracker = tracking_callback(job)
    if tracker is not None:
        win_request = job_request(candidate_job(job, winner, settings.candidates[winner]))

        def log() -> object:
            _log_selection(tracker.ref, selection)
            return result

        run_with_callbacks([tracker], run_name, win_request.with_storage(run_name=run_name), log)
    run_id = tracker.run["run_id"] if tracker else None
    model_uri = tracker.model_uri if tracker else None
    if echo:
        print(f"auto: candidates ranked on {selection['metric']} of the validation split (* the winner)", flush=True)
        print(selection_table(rows, winner), flush=True)
        uri = tracker.run["tracking_uri"] if tracker else None
        for line in summary_lines(result, run_id, model_uri, uri, base.train.val_score):
            print(line, flush=True)
    return TrainJobResult(run_id, model_uri, result.checkpoint_path, result)


def _final_scores(checkpoint) -> dict:
    from ..checkpoint import read_checkpoint

    return dict(read_checkpoint(checkpoint).get("validation") or {})


def _log_selection(ref, selection: dict) -> None:
    """The table as MLflow params (`auto.winner`, `auto.candidates`, ...) and metrics (`auto.<model>.*`)."""
    from .. import tracking as tr

    params = {
        "auto.winner": selection["winner"],
        "auto.metric": selection["metric"],
        "auto.candidates": ",".join(r["model"] for r in selection["candidates"]),
        "auto.tie_tolerance": selection["tie_tolerance"],
        "auto.budget_seconds": selection.get("budget_seconds"),
    }
    client = ref.client
    for k, v in params.items():
        client.log_param(ref.run_id, k, str(v))
    metrics = {}
    for r in selection["candidates"]:
        for key in ("val_score", "val_crps", "val_rmse", "fit_seconds"):
            v = r.get(key)
            if isinstance(v, int | float) and math.isfinite(v):
                metrics[f"auto.{r['model']}.{key}"] = float(v)
        client.set_tag(ref.run_id, f"auto.{r['model']}.status", r.get("status", ""))
    tr.log_epoch_metrics(ref, metrics, step=0)


__all__ = [
    "CandidateSpace",
    "add_selection",
    "candidate_job",
    "candidate_space",
    "run_auto_train",
    "selection_from_table",
]
