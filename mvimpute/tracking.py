"""MLflow tracking, the logging side: runs, per-epoch metrics, figures and the model as a registered pyfunc.

Runs go to `registry.resolve_tracking_uri()`'s store (artifacts under `./mlartifacts` for the embedded
SQLite one), set when a run starts, never at import. A registered model's newest version gets the
alias `champion`, which serving loads. The logged model wraps the self-describing checkpoint and
ships only `MODEL_CODE` of the package. The registry side (aliases, checkpoints) is `registry.py`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from .registry import (  # registry names, importable from here as before
    CHAMPION,
    DEFAULT_TRACKING_URI,
    fetch_checkpoint,
    load_pyfunc,
    model_version,
    resolve_tracking_uri,
    set_alias,
)

DEFAULT_ARTIFACT_DIR = "mlartifacts"
_REQUIREMENTS = (
    "torch",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "scipy",
    "scoringrules",
    "tqdm",
    "pyyaml",
    "pydantic",
    "mlflow",
)


@dataclass
class RunRef:
    """Where a run lives; plain data, so it travels to Ray workers."""

    tracking_uri: str
    run_id: str
    experiment_id: str

    def as_dict(self) -> dict:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "experiment_id": self.experiment_id}

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)  # its registry: the same store


def _experiment(client: MlflowClient, name: str, embedded: bool) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = Path(DEFAULT_ARTIFACT_DIR).resolve().as_uri() if embedded else None
    return client.create_experiment(name, artifact_location=location)


def start_run(
    experiment: str = "mvimpute",
    run_name: str | None = None,
    tracking_uri: str | None = None,
    *,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    adopt_tag: str | None = None,
) -> RunRef:
    """Start an MLflow run (creating the experiment if needed) and point mlflow at its store;
    `parent_run_id` makes it a child run (a sweep's trial). With `adopt_tag` (a key of `tags`), a run
    of the experiment with the same parent and that tag's value that did not fail is taken up again
    instead (its status back to RUNNING): a trial a restored search runs again (it was cut off with
    its driver, or ended unrecorded) keeps its one run; a failed attempt keeps its own."""
    given = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri)
    exp_id = _experiment(client, experiment, embedded=not given)
    all_tags = {"mlflow.source.name": "mvimpute.train", **dict(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    if adopt_tag is not None:
        value = all_tags[adopt_tag]
        query = f"tags.`{adopt_tag}` = '{value}' and attributes.status != 'FAILED'"
        if parent_run_id:
            query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
        found = client.search_runs([exp_id], filter_string=query, max_results=1)
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return RunRef(uri, found[0].info.run_id, exp_id)
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    return RunRef(uri, run.info.run_id, exp_id)


def end_run(run: RunRef, status: str = "FINISHED") -> None:
    run.client.set_terminated(run.run_id, status)


def flatten(config: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested config → `a.b.c` keys with string values (MLflow params)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def log_config(run: RunRef, config: Mapping) -> None:
    """The resolved config as params (flattened) and as `config.yaml`."""
    params = [Param(k, v) for k, v in flatten(config).items()]
    client = run.client
    for i in range(0, len(params), 100):
        client.log_batch(run.run_id, params=params[i : i + 100])
    client.log_text(run.run_id, yaml.safe_dump(dict(config), sort_keys=False), "config.yaml")


def log_epoch_metrics(run: RunRef | Mapping, metrics: Mapping, step: int) -> None:
    """One epoch's metrics (called by rank 0 of a Ray Train run, or in-process)."""
    if isinstance(run, Mapping):
        run = RunRef(**run)
    ts = int(time.time() * 1000)
    items = [
        Metric(k, float(v), ts, int(step))
        for k, v in metrics.items()
        if k != "epoch" and isinstance(v, int | float | np.floating | np.integer) and np.isfinite(v)
    ]
    if items:
        run.client.log_batch(run.run_id, metrics=items)


def pinned_requirements() -> list[str]:
    """The packages a served model needs, pinned to the versions here (local version tags dropped)."""
    reqs = []
    for name in _REQUIREMENTS:
        try:
            reqs.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


PYFUNC_PARAMS = {"n_samples": 100, "return": ["mean"], "level": 0.9}
# what a logged model needs of the package to load and predict (paths under mvimpute/): the import
# closure of pyfunc_model.py (MLflow keeps that file itself beside the code) and of the predictor
MODEL_CODE = (
    "__init__.py",
    "auto.py",
    "batch.py",
    "checkpoint.py",
    "config.py",
    "files.py",
    "imputer.py",
    "likelihoods.py",
    "masking.py",
    "monitoring.py",
    "names.py",
    "predictor.py",
    "registry.py",
    "storage.py",
    "tracking.py",
    "training.py",
    "data",
    "models",
)


class MultiViewPyfunc(mlflow.pyfunc.PythonModel):
    """An mvimpute checkpoint as a pyfunc that calls `Predictor`: a wide `view:column` frame in (NaN =
    missing), the same frame imputed out; `params` ask for more: `return` ⊆ {mean, std, interval,
    samples} adds `<column>__std`, `__lower`/`__upper` (central `level` interval) and `__draws`
    columns from `n_samples` posterior draws."""

    def load_context(self, context) -> None:
        from mvimpute.predictor import Predictor

        self.predictor = Predictor.from_checkpoint(context.artifacts["checkpoint"], device="cpu")

    # typed: MLflow warns at class creation about a `predict` without hints (in a filter it resets to "once")
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = {**PYFUNC_PARAMS, **(params or {})}
        outputs = params["return"]
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return self.predictor.predict_frame(
            model_input.astype("float64"),
            outputs=outputs,
            n_samples=int(params["n_samples"]),
            level=float(params["level"]),
        )


def set_pyfunc_model() -> None:
    """Called by `mvimpute/pyfunc_model.py`, the file a model logged from code runs when MLflow loads it."""
    mlflow.models.set_model(MultiViewPyfunc())


def _model_code(tmp: Path) -> Path:
    """A copy of the package holding only what a logged model needs (`MODEL_CODE`)."""
    src, code = Path(__file__).resolve().parent, tmp / "mvimpute"
    code.mkdir(parents=True)
    for name in MODEL_CODE:
        if (src / name).is_dir():
            shutil.copytree(src / name, code / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src / name, code / name)
    return code


def log_model(
    run: RunRef,
    checkpoint: str | Path,
    example=None,
    registered_model_name: str | None = None,
    imputer=None,
) -> str:
    """Log the checkpoint as a pyfunc model in `run` (MLflow models from code: `pyfunc_model.py`);
    register it when a name is given. The model accepts `params` n_samples, return and level.

    Returns `models:/<name>/<version>` when registered, else the run's model URI."""
    from mlflow.models import infer_signature

    from .checkpoint import checkpoint_file
    from .imputer import MultiViewImputer
    from .predictor import Predictor

    ckpt = checkpoint_file(checkpoint)
    predictor = Predictor(imputer or MultiViewImputer.load(ckpt))
    if example is None:
        import pandas as pd

        example = pd.DataFrame(np.zeros((1, len(predictor.input_columns))), columns=predictor.input_columns)
    example = example.astype("float64")
    signature = infer_signature(example, predictor.predict_frame(example), params=PYFUNC_PARAMS)
    mlflow.set_tracking_uri(run.tracking_uri)
    mlflow.set_registry_uri(run.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run.run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"checkpoint": str(ckpt)},
            code_paths=[str(_model_code(Path(tmp)))],
            signature=signature,
            input_example=example.head(2),
            pip_requirements=pinned_requirements(),
            registered_model_name=registered_model_name,
        )
    if registered_model_name and info.registered_model_version is not None:
        return f"models:/{registered_model_name}/{info.registered_model_version}"
    return info.model_uri


def log_figure(run: RunRef, fig, artifact_file: str) -> None:
    from . import plots

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        plots.save(fig, path)
        parent = str(Path(artifact_file).parent)
        run.client.log_artifact(run.run_id, str(path), None if parent == "." else parent)


def log_training_outputs(
    run: RunRef,
    result,
    registered_model_name: str | None = None,
    n_draws: int = 50,
    alias: str | None = CHAMPION,
) -> str:
    """After a run: summary metrics, figures (curves, posterior draws, JPVAE latent correlations) and
    the registered model. `result` is the engine's `RunResult`. Returns the model URI."""
    from . import plots
    from .imputer import MultiViewImputer

    imputer = MultiViewImputer.load(result.checkpoint_path)
    client = run.client
    summary = {"best_epoch": result.best_epoch, "epochs_run": len(result.history)}
    best = [h for h in result.history if h.get("epoch") == result.best_epoch]
    if best and "val_rmse" in best[0]:
        summary["best_val_rmse"] = best[0]["val_rmse"]
    log_epoch_metrics(run, summary, step=max(len(result.history), 1))
    client.set_tag(run.run_id, "ray.run_name", result.run_name)
    client.set_tag(run.run_id, "ray.checkpoint", str(result.checkpoint_path))
    client.log_artifact(run.run_id, str(result.checkpoint_file), "checkpoint")
    log_figure(run, plots.training_curves(result.history), "plots/training_curves.png")
    if result.preview is not None and result.preview.n_samples:
        log_figure(run, plots.posterior_draws(imputer, result.preview, n_samples=n_draws), "plots/posterior_draws.png")
    heat = plots.latent_cross_correlation(imputer.model_)
    if heat is not None:
        log_figure(run, heat, "plots/latent_cross_correlation.png")
    example = result.preview.to_frame() if result.preview is not None else None
    uri = log_model(run, result.checkpoint_file, example, None, imputer=imputer)
    if registered_model_name:
        uri = register_model(run, uri, registered_model_name, alias=alias)
    return uri


def register_model(run: RunRef, model_uri: str, name: str, alias: str | None = CHAMPION) -> str:
    """A new version of registered model `name` from a logged model, given `alias` (default `champion`).

    Returns `models:/<name>@<alias>` (or `models:/<name>/<version>` without an alias). Uses the
    client directly: `log_model(registered_model_name=…)` prints its progress to stderr."""
    from mlflow.exceptions import MlflowException

    client = run.client
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise
    # a logged model's URI (`models:/m-…`) names the logged model; a tracking server refuses it as the
    # source unless model_id says so too (file and SQL stores accept it without)
    logged = re.fullmatch(r"models:/(m-[0-9a-f]+)/?", model_uri)
    version = client.create_model_version(name, model_uri, run_id=run.run_id, model_id=logged[1] if logged else None)
    for _ in range(60):  # file and SQL stores are READY at once; a server with async registration may lag
        if client.get_model_version(name, version.version).status == "READY":
            break
        time.sleep(0.5)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
        return f"models:/{name}@{alias}"
    return f"models:/{name}/{version.version}"


def metric_key(name: str) -> str:
    """`name` with every character MLflow does not allow in a metric name replaced by `_`."""
    return re.sub(r"[^\w./\- ]", "_", name).strip("/") or "_"


def log_evaluation(
    config: Mapping,
    metrics: Mapping[str, float],
    artifacts: Iterable[str | Path],
    tracking_uri: str | None = None,
    experiment: str = "mvimpute-evaluate",
    run_name: str | None = None,
) -> RunRef:
    """One finished run for an evaluation grid: `config` as params (flattened) and `config.yaml`,
    `metrics` (e.g. `rmse/<method>/<mechanism>/<rate>`, names made MLflow-legal), the files as artifacts.

    A new experiment in a SQLite store keeps its artifacts in `mlartifacts/` beside the database file."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    if uri.startswith("sqlite:///") and client.get_experiment_by_name(experiment) is None:
        location = (Path(uri[len("sqlite:///") :]).parent / DEFAULT_ARTIFACT_DIR).resolve().as_uri()
        client.create_experiment(experiment, artifact_location=location)
    run = start_run(experiment, run_name, tracking_uri=uri)
    try:
        client = run.client
        client.set_tag(run.run_id, "mlflow.source.name", "mvimpute.evaluate")
        log_config(run, config)
        ts = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), ts, 0) for k, v in metrics.items() if np.isfinite(v)]
        for i in range(0, len(items), 500):
            client.log_batch(run.run_id, metrics=items[i : i + 500])
        for path in artifacts:
            if Path(path).is_file():
                client.log_artifact(run.run_id, str(path))
    except BaseException:
        end_run(run, "FAILED")
        raise
    end_run(run)
    return run


# ----------------------------------------------------------------------------- sweeps


def child_runs(parent: RunRef) -> list:
    """The child runs of `parent` (MLflow `Run` objects), oldest first."""
    client = parent.client
    return list(
        reversed(
            client.search_runs(
                [parent.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
                max_results=10_000,
            )
        )
    )


def run_ref(parent: RunRef, run_id: str) -> RunRef:
    """Another run of the same store and experiment as `parent`."""
    return RunRef(parent.tracking_uri, run_id, parent.experiment_id)


def log_sweep_outputs(parent: RunRef, table, figure, summary: Mapping[str, float], tags: Mapping[str, str]) -> None:
    """A sweep's results on its parent run: the table (`sweep/results.csv`), the score plot
    (`sweep/scores.png`), summary metrics and tags (the champion trial)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.csv"
        table.to_csv(path, index=False)
        parent.client.log_artifact(parent.run_id, str(path), "sweep")
    if figure is not None:
        log_figure(parent, figure, "sweep/scores.png")
    log_epoch_metrics(parent, summary, step=0)
    for k, v in tags.items():
        parent.client.set_tag(parent.run_id, k, str(v))


__all__ = [
    "CHAMPION",
    "child_runs",
    "log_sweep_outputs",
    "run_ref",
    "DEFAULT_TRACKING_URI",
    "MODEL_CODE",
    "MultiViewPyfunc",
    "RunRef",
    "end_run",
    "flatten",
    "log_config",
    "log_epoch_metrics",
    "log_evaluation",
    "log_figure",
    "log_model",
    "log_training_outputs",
    "fetch_checkpoint",
    "load_pyfunc",
    "metric_key",
    "model_version",
    "pinned_requirements",
    "register_model",
    "resolve_tracking_uri",
    "set_alias",
    "set_pyfunc_model",
    "start_run",
]
