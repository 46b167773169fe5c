"""The `train` job: a job config (YAML + overrides) → one run request → a Ray Train run → an MLflow run
and a registered model with the alias `champion`.

    mvimpute train --data digits-halves --num-workers 2 --epochs 20 train.batch_size=128
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import TrainJobConfig, flag_overrides, load_job_config
from ..engine.callbacks import EpochLines, RunCallback
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
        from .auto import run_auto_train

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


__all__ = ["TrainJobResult", "job_request", "run_job", "summary_lines", "train_main"]
