"""The `train` job: a job config (YAML + overrides) → one run request → a Ray Train run → an MLflow run
and a registered model with the alias `champion`.

    mvimpute train --data digits-halves --num-workers 2 --epochs 20 train.batch_size=128
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import TrainJobConfig, flag_overrides, load_job_config
from ..engine.callbacks import EpochLines, RunCallback, run_with_callbacks
from ..engine.request import Resources, RunRequest, Storage, make_request
from ..engine.runner import RunResult, resume_state, train
from ..names import AUTO


@dataclass
class TrainJobResult:
    run_id: str | None
    model_uri: str | None
    checkpoint_path: Path
    result: RunResult


def job_request(job: TrainJobConfig, model_params: Mapping | None = None) -> RunRequest:
    """The run request of a job config, built once (the model config validated here). For
    `model="auto"`, the request of its cheapest candidate (the other candidates' differ in the model alone)."""
    if job.model == AUTO:
        from .auto import candidate_job, settings_of

        job = candidate_job(job, *next(iter(settings_of(job).candidates.items())))
    cluster = job.cluster
    return make_request(
        job.model,
        job.model_params if model_params is None else model_params,
        job.train,
        resources=Resources(
            cluster.num_workers,
            cluster.use_gpu,
            cluster.resources_per_worker,
            cluster.wait_for_resources,
            cluster.min_workers,
        ),
        storage=Storage(
            cluster.storage_path, job.run_name, cluster.max_failures, cluster.checkpoint_every, job.resume_from
        ),
        likelihoods=job.likelihoods,
        scalings=job.scalings,
    )


def given_keys(job: TrainJobConfig) -> set[str]:
    """The model and train keys the job sets itself: data-size defaults apply to the others."""
    return set(job.model_params) | set(job.train)


def check_data(job: TrainJobConfig) -> None:
    """A bad dataset spec fails before an MLflow run or a Ray cluster is touched."""
    if job.data.endswith((".yaml", ".yml")):
        from ..data.spec import validate_spec

        validate_spec(job.data)


def tracking_callback(job: TrainJobConfig):
    """The job's MLflow run as an engine callback (None with tracking off)."""
    if not job.mlflow.enabled:
        return None
    from .tracking import MlflowRun

    m = job.mlflow
    register = {"registered_model_name": job.registered_model_name, "n_draws": m.n_draws, "alias": m.alias}
    return MlflowRun(
        {"experiment": m.experiment, "tracking_uri": m.tracking_uri}, job.model_dump(mode="json"), register
    )


def train_main(
    config: str | Path | Mapping | None = None, overrides: Sequence[str] = (), *, echo: bool = True, **flags
) -> TrainJobResult:
    """The `train` job: config YAML + overrides → Ray Train run → MLflow run + registered model.

    `flags` override the config, as the command line's options do: data, num_workers, use_gpu,
    run_name, resume_from, tracking_uri, registered_model_name, tracking (see `config.FLAG_KEYS`).
    With `echo`, prints one line per epoch and a summary (best epoch and score, MLflow run id, model
    URI). Ctrl-C stops the run (`RunInterrupted`), marks the MLflow run KILLED and keeps the checkpoints.
    """
    return run_job(load_job_config(config, [*overrides, *flag_overrides(flags)]), echo)


def run_job(job: TrainJobConfig, echo: bool = True) -> TrainJobResult:
    """A loaded job config run: request, data, resources, callbacks, Ray Train run, summary."""
    if job.model == AUTO:
        return run_auto_train(job, echo)
    check_data(job)
    state = resume_state(job.resume_from, job.model)  # a damaged checkpoint fails before MLflow or Ray
    request = job_request(job, state["model_config"] if state is not None else None)
    tracker = tracking_callback(job)
    callbacks: list[RunCallback] = [cb for cb in (tracker, EpochLines(request.train.epochs) if echo else None) if cb]
    result = train(request, job.data, callbacks, given=given_keys(job))
    run_id = tracker.run["run_id"] if tracker else None
    model_uri = tracker.model_uri if tracker else None
    if echo:
        uri = tracker.run["tracking_uri"] if tracker else None
        for line in summary_lines(result, run_id, model_uri, uri, request.train.val_score):
            print(line, flush=True)
    return TrainJobResult(run_id, model_uri, result.checkpoint_path, result)


def summary_lines(result, run_id: str | None, model_uri: str | None, tracking_uri: str | None, val_score: str = "crps"):
    """The final summary of a train run: best epoch and the score that selected it, run id, model URI, checkpoint."""
    best = next((h for h in result.history if h.get("epoch") == result.best_epoch), {})
    key = next((k for k in (f"val_{val_score}", "train_loss") if k in best), None)
    score = f"{key} {best[key]:.4g}" if key else "no score"
    yield f"best epoch {result.best_epoch} of {len(result.history)} ({score})"
    yield f"MLflow run {run_id or '-'}" + (f" at {tracking_uri}" if run_id else " (tracking off)")
    yield f"model URI {model_uri or '-'}"
    yield f"checkpoint {result.checkpoint_path}"


def run_auto_train(job: TrainJobConfig, echo: bool = True):
    """`mvimpute train --model auto`: each candidate a Ray Train run on the data read once; the winner's
    checkpoint gets the table; one MLflow run logs the table and registers the winner."""
    import math
    import time

    from ..auto import pick_winner, selection_table, without_row_scores
    from ..engine.resources import plan_worker_resources
    from ..engine.runner import prepare_for, read_data, run_training, start_ray
    from .auto import add_selection, candidate_job, final_scores, log_selection, settings_of

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
        scores = final_scores(result.checkpoint_path)
        row.update(
            val_score=scores.get("val_score", math.nan),
            val_crps=scores.get("val_crps", math.nan),
            val_rmse=scores.get("val_rmse", math.nan),
            val_rows=scores.get("rows"),
            view_weight=scores.get("view_weight"),
            fit_seconds=time.perf_counter() - c0,
            epochs_run=len(result.history),
            best_epoch=result.best_epoch,
            status="ok",
            run_name=result.run_name,
        )
        rows.append(row)
        results[name] = result
    metric = f"val_{base.train.val_score}"
    winner = pick_winner(rows, settings.tie_tolerance, tie_se=settings.tie_se, metric=metric)
    rows = without_row_scores(rows)
    for r in rows:
        r["winner"] = r["model"] == winner
    result = results[winner]
    selection = {
        "metric": metric,
        "winner": winner,
        "tie_tolerance": settings.tie_tolerance,
        "tie_se": settings.tie_se,
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
            log_selection(tracker.ref, selection)
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


__all__ = ["TrainJobResult", "job_request", "run_job", "summary_lines", "train_main"]
