"""The `train` job: a job config (YAML + overrides) → a Ray Train run → an MLflow run and a registered model.

Apart from the Ray Train runner (`mvimpute.distributed`), which knows nothing of configs or MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import load_job_config


@dataclass
class TrainJobResult:
    run_id: str | None
    model_uri: str | None
    checkpoint_path: Path
    result: object  # a `distributed.DistributedResult`


def train_main(
    config: str | Path | Mapping | None = None,
    overrides: Sequence[str] = (),
    *,
    data: str | None = None,
    num_workers: int | None = None,
    use_gpu: bool | None = None,
    run_name: str | None = None,
    resume_from: str | None = None,
    tracking_uri: str | None = None,
    registered_model_name: str | None = None,
    tracking: bool | None = None,
    echo: bool = True,
) -> TrainJobResult:
    """The `train` job: config YAML + overrides → Ray Train run → MLflow run + registered model.

    Keyword arguments override the config (they are the command line's flags). With `echo`,
    prints one line per epoch and a summary (best epoch and score, MLflow run id, model URI).
    Ctrl-C stops the run (`RunInterrupted`), marks the MLflow run KILLED and keeps the checkpoints.
    """
    items = list(overrides)
    for key, value in (
        ("data", data),
        ("cluster.num_workers", num_workers),
        ("cluster.use_gpu", use_gpu),
        ("run_name", run_name),
        ("resume_from", resume_from),
        ("mlflow.tracking_uri", tracking_uri),
        ("mlflow.registered_model_name", registered_model_name),
        ("mlflow.enabled", tracking),
    ):
        if value is not None:
            items.append(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    job = load_job_config(config, items)
    if job.data.endswith((".yaml", ".yml")):
        from .data.spec import validate_spec

        validate_spec(job.data)  # a bad spec fails before an MLflow run or a Ray cluster is touched
    if job.resume_from is not None:
        from .checkpoint import read_checkpoint

        try:  # a damaged checkpoint fails before an MLflow run is created or Ray starts
            read_checkpoint(job.resume_from, what="resume_from")
        except FileNotFoundError as err:
            raise ValueError(str(err)) from None

    from .distributed import train_distributed

    run = None
    if job.mlflow.enabled:
        from . import tracking as tr

        run = tr.start_run(job.mlflow.experiment, job.run_name, job.mlflow.tracking_uri)
        tr.log_config(run, job.model_dump(mode="json"))
    status = "FAILED"
    try:
        result = train_distributed(
            job.data,
            job.model,
            job.model_params,
            job.train,
            num_workers=job.cluster.num_workers,
            use_gpu=job.cluster.use_gpu,
            resources_per_worker=job.cluster.resources_per_worker,
            checkpoint_every=job.cluster.checkpoint_every,
            storage_path=job.cluster.storage_path,
            run_name=job.run_name,
            resume_from=job.resume_from,
            max_failures=job.cluster.max_failures,
            likelihoods=job.likelihoods,
            scalings=job.scalings,
            tracking=run.as_dict() if run else None,
            wait_for_resources=job.cluster.wait_for_resources,
            echo=echo,
        )
        model_uri = None
        if run is not None:
            model_uri = tr.log_training_outputs(
                run,
                result,
                registered_model_name=job.registered_model_name,
                n_draws=job.mlflow.n_draws,
                alias=job.mlflow.alias,
            )
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if run is not None:
            tr.end_run(run, status)
    if echo:
        uri = run.tracking_uri if run else None
        for line in summary_lines(result, run.run_id if run else None, model_uri, uri, job.train["val_score"]):
            print(line, flush=True)
    return TrainJobResult(run.run_id if run else None, model_uri, result.checkpoint_path, result)


def summary_lines(
    result, run_id: str | None, model_uri: str | None, tracking_uri: str | None, val_score: str = "crps"
):
    """The final summary of a train run: best epoch and the score that selected it, run id, model URI, checkpoint."""
    best = next((h for h in result.history if h.get("epoch") == result.best_epoch), {})
    key = next((k for k in (f"val_{val_score}", "train_loss") if k in best), None)
    score = f"{key} {best[key]:.4g}" if key else "no score"
    yield f"best epoch {result.best_epoch} of {len(result.history)} ({score})"
    yield f"MLflow run {run_id or '-'}" + (f" at {tracking_uri}" if run_id else " (tracking off)")
    yield f"model URI {model_uri or '-'}"
    yield f"checkpoint {result.checkpoint_path}"


__all__ = ["TrainJobResult", "summary_lines", "train_main"]
