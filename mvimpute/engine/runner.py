"""The Ray Train runner: one `TorchTrainer` run of a `RunRequest` on prepared data.

`run_training` changes nothing it is given: each worker runs `worker.WorkerRun` (DDP through
`ray.train.torch.prepare_model`), a worker that fails restarts from the last checkpoint
(`storage.max_failures`), and a stopped run resumes when run again with the same name and storage.
`run_local_trial` runs the same loop inside a Tune trial's own process. `train_distributed` reads,
prepares and runs in one call for Python callers. Tracking comes in as `callbacks`.
"""

from __future__ import annotations

import datetime as dt
import signal
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import CHECKPOINT_FILE, checkpoint_file, read_checkpoint
from ..config import DEFAULT_STORAGE, TrainConfig
from ..data.datasets import DATASETS
from ..data.multiview import MultiViewData, ViewSchema
from ..data.ray_data import RayMultiView
from ..data.spec import DatasetSpec, validate_spec
from .callbacks import RunCallback, run_with_callbacks
from .prepare import PreparedData, prepare_data, read_data
from .request import Resources, RunRequest, Storage, make_request
from .resources import plan_worker_resources
from .worker import TuneTrialEnv, WorkerPlan, WorkerRun, fault_from_env, limit_heap_fragmentation, ray_train_worker


@dataclass
class RunResult:
    """What a run leaves: the final checkpoint directory and what it records."""

    checkpoint_path: Path
    history: list[dict]
    best_epoch: int
    run_name: str
    storage_path: str
    schema: ViewSchema
    model: str
    attempts: list[int] = field(default_factory=list)
    preview: MultiViewData | None = None
    ray_result: object = None

    @property
    def checkpoint_file(self) -> Path:
        return checkpoint_file(self.checkpoint_path)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; its checkpoints stay where they were written."""

    def __init__(self, run_name: str, storage_path: str) -> None:
        super().__init__(run_name, storage_path)
        self.run_name, self.storage_path = run_name, storage_path

    def __str__(self) -> str:
        return (
            f"run {self.run_name!r} stopped by Ctrl-C; its last checkpoint is under "
            f"{self.storage_path}/{self.run_name}: resume with --run-name {self.run_name}"
        )


_SIGINT = threading.Event()


def _trainer_class():
    """`TorchTrainer` whose Ctrl-C handler keeps Ray's graceful abort (workers stopped, checkpoints
    kept) and then raises `KeyboardInterrupt` in the driver: Ray's own handler ends the process with
    `sys.exit(0)`, which reads as a finished run."""
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        def _register_sigint_handler(self, controller) -> None:  # Ray Train V2's hook, run in fit()
            super()._register_sigint_handler(controller)
            ray_handler = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                _SIGINT.set()
                try:
                    if callable(ray_handler):
                        ray_handler(signum, frame)
                except SystemExit:
                    pass
                raise KeyboardInterrupt

            signal.signal(signal.SIGINT, handler)

    return Trainer


def worker_plan(request: RunRequest, prepared: PreparedData, run_name: str, **extra) -> WorkerPlan:
    """The plan the workers follow; a request that does not fit the prepared data fails here, on the driver."""
    prepared.check_split(request.train)
    return WorkerPlan(
        run_name=run_name,
        schema=prepared.schema.state(),
        n_train=prepared.n_train,
        has_validation="val" in prepared.datasets,
        imputer=dict(prepared.imputer),
        source=prepared.source,
        fault=fault_from_env(),
        **extra,
    )


def local_trial(request: RunRequest, prepared: PreparedData, callbacks: Sequence[RunCallback] = ()) -> None:
    """The workers' loop run inside a Ray Tune trial's own process (called from a Tune function): no
    Ray Train controller or worker group to start, the prepared datasets read directly, per-epoch
    reports and checkpoints through `ray.tune.report`, a restored trial resumed from its last Tune
    checkpoint. One process: DDP needs `run_training`. Calls no `on_start`/`on_end`."""
    plan = worker_plan(request, prepared, request.storage.run_name or "trial")
    limit_heap_fragmentation()
    WorkerRun(request, plan, callbacks, TuneTrialEnv(prepared.datasets, request.resources.use_gpu)).run()


def run_config_for(request: RunRequest, callbacks: Sequence = (), num_to_keep: int = 3):
    """The `ray.train.RunConfig` of a request: its name, storage and failure policy (+ Ray callbacks)."""
    import ray.train

    return ray.train.RunConfig(
        name=request.storage.run_name,
        storage_path=request.storage.path,
        failure_config=ray.train.FailureConfig(max_failures=request.storage.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=num_to_keep),
        callbacks=list(callbacks) or None,
    )


def run_training(
    request: RunRequest, prepared: PreparedData, callbacks: Sequence[RunCallback] = (), **options
) -> RunResult:
    """One `TorchTrainer` run of `request` on `prepared` data, between the callbacks' `on_start` and
    `on_end`; nothing given is changed. `options` are `train_once`'s. A request without a run name
    gets `<model>-<time>`."""
    run_name = request.storage.run_name or f"{request.model}-{dt.datetime.now():%Y%m%d-%H%M%S-%f}"
    request = request.with_storage(run_name=run_name)
    return run_with_callbacks(callbacks, run_name, request, lambda: train_once(request, prepared, callbacks, **options))


def train_once(
    request: RunRequest,
    prepared: PreparedData,
    callbacks: Sequence[RunCallback] = (),
    worker_resources: Mapping[str, float] | None = None,
    run_config=None,
    preview_rows: int = 8,
    report_placement_group: bool = False,
) -> RunResult:
    """One `TorchTrainer` run of `request` (its `storage.run_name` set) without the callbacks'
    `on_start`/`on_end` (a sweep's trial calls those itself).

    `worker_resources` come from `plan_worker_resources` (as given); `run_config` defaults to
    `run_config_for(request)` (a sweep passes its own, with Tune's report callback). Each worker
    report carries the epoch's metrics plus `score` (the best selectable epoch's `select_metric` so
    far) and `best_epoch`; with `report_placement_group`, also the id of the workers' placement group
    (`train_placement_group`), so whoever stops the run from outside (a Tune scheduler) can release it."""
    run_name = request.storage.run_name
    plan = worker_plan(request, prepared, run_name, report_placement_group=report_placement_group)
    result = _fit(request, prepared, plan, list(callbacks), worker_resources, run_config or run_config_for(request))
    return _result(request, prepared, result, run_name, preview_rows)


def _fit(request: RunRequest, prepared: PreparedData, plan: WorkerPlan, callbacks, worker_resources, run_config):
    import ray
    import ray.train

    n = request.resources.num_workers
    trainer = _trainer_class()(
        ray_train_worker,
        train_loop_config={"request": request, "plan": plan, "callbacks": callbacks},
        scaling_config=ray.train.ScalingConfig(
            num_workers=request.resources.worker_group,
            use_gpu=request.resources.use_gpu,
            resources_per_worker=dict(worker_resources) if worker_resources else None,
        ),
        run_config=run_config,
        datasets=dict(prepared.datasets),
        # one worker reads the whole training set: no split, so no SplitCoordinator actor between it and the data
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"] if n > 1 else []),
    )
    try:
        return trainer.fit()
    except KeyboardInterrupt:
        raise RunInterrupted(plan.run_name, request.storage.path) from None
    except ray.exceptions.RayActorError as err:  # Ray Train's own Ctrl-C handler kills the controller
        if _SIGINT.is_set():
            raise RunInterrupted(plan.run_name, request.storage.path) from None
        raise RuntimeError(f"run {plan.run_name!r}: the Ray Train controller died ({err})") from None


def _result(request: RunRequest, prepared: PreparedData, result, run_name: str, preview_rows: int) -> RunResult:
    if result.checkpoint is None:
        raise RuntimeError(f"run {run_name!r} finished without a checkpoint")
    ckpt_dir = Path(result.checkpoint.path)
    if not (ckpt_dir / CHECKPOINT_FILE).is_file():  # remote storage: bring the final checkpoint here
        ckpt_dir = Path(result.checkpoint.to_directory(tempfile.mkdtemp(prefix="mvimpute-ckpt-")))
    state = read_checkpoint(ckpt_dir, "cpu")
    return RunResult(
        checkpoint_path=ckpt_dir,
        history=list(state.get("history", [])),
        best_epoch=int(state["loop"]["best_epoch"]),
        run_name=run_name,
        storage_path=request.storage.path,
        schema=ViewSchema.from_state(state["schema"]),
        model=request.model,
        attempts=list(state.get("attempts", [])),
        preview=_preview(prepared, preview_rows),
        ray_result=result,
    )


def _preview(prepared: PreparedData, rows: int) -> MultiViewData | None:
    """A few validation rows, for the posterior-draws figure and a logged model's input example."""
    if prepared.val is None or rows <= 0:
        return None
    val = prepared.val
    preview = RayMultiView(val.dataset.limit(rows), val.id_column, val.columns, prepared.schema.likelihoods)
    data = preview.to_multiview()
    return data if data.n_samples else None


def resume_state(resume_from: str | Path | None, model: str) -> dict | None:
    """The checkpoint a run resumes from, read and checked against `model`; a `ValueError` naming it."""
    if resume_from is None:
        return None
    try:
        state = read_checkpoint(resume_from, "cpu", what="resume_from")
    except FileNotFoundError:
        raise ValueError(f"resume_from: no checkpoint at {str(resume_from)!r}") from None
    if state.get("model") != model:
        raise ValueError(f"resume_from holds a {state.get('model')!r} model, not {model!r}")
    return state


def start_ray() -> dict[str, float]:
    """Ray (local, or the cluster at RAY_ADDRESS) started if it is not; the cluster's resources."""
    import ray

    if not ray.is_initialized():
        from ..console import ray_init_kwargs

        ray.init(**ray_init_kwargs())
    return ray.cluster_resources()


def prepare_for(request: RunRequest, data, state: dict | None = None, **options) -> PreparedData:
    """`prepare_data` for `request` (its split, likelihoods and scalings); a resumed run keeps its
    checkpoint's scaling, so that the weights see the data they were trained on."""
    schema = n_train = None
    if state is not None:
        schema = ViewSchema.from_state(state["schema"])
        n_train = state.get("distributed", {}).get("n_train")
    try:
        return prepare_data(
            data, request.train, likelihoods=request.likelihoods, scalings=request.scalings,
            schema=schema, n_train=n_train, **options,
        )  # fmt: skip
    except ValueError as err:
        if state is not None and "schema was fitted on other" in str(err):
            raise ValueError("resume_from was trained on other views/columns than this data set") from None
        raise


def train(
    request: RunRequest,
    data,
    callbacks: Sequence[RunCallback] = (),
    *,
    given: set[str] | frozenset[str] = frozenset(),
    num_partitions: int | None = None,
    preview_rows: int = 8,
) -> RunResult:
    """Read and prepare `data` for `request` and run it: the worker resources planned against the
    cluster (a request it cannot meet fails before any worker starts), the data-size defaults of
    `MultiViewImputer.fit` applied to the keys not in `given` (not when resuming: the checkpoint's
    config and scaling are kept), then `run_training`."""
    state = resume_state(request.storage.resume_from, request.model)
    res = request.resources
    per_worker = plan_worker_resources(
        res.num_workers, res.use_gpu, res.per_worker, start_ray(), res.wait_for_resources
    )
    rmv = read_data(data, request.likelihoods, request.scalings, num_partitions)
    if state is None:
        request = request.sized_for(rmv.dataset.count(), given)
    prepared = prepare_for(request, rmv, state)
    return run_training(request, prepared, callbacks, worker_resources=per_worker, preview_rows=preview_rows)


def train_distributed(
    data,
    model: str = "jpvae",
    model_params: Mapping | None = None,
    train_config: TrainConfig | Mapping | None = None,
    *,
    num_workers: int = 1,
    use_gpu: bool = False,
    resources_per_worker: Mapping[str, float] | None = None,
    wait_for_resources: bool = False,
    storage_path: str | Path | None = None,
    run_name: str | None = None,
    max_failures: int = 2,
    checkpoint_every: int = 1,
    resume_from: str | Path | None = None,
    likelihoods: Mapping[str, str] | None = None,
    scalings: Mapping[str, str] | None = None,
    callbacks: Sequence[RunCallback] = (),
    num_partitions: int | None = None,
    preview_rows: int = 8,
) -> RunResult:
    """Train `model` on `data` with Ray Train (DDP over `num_workers` workers), for Python callers:
    the run request built once from these plain values, then `train`.

    `data`: a dataset spec (YAML path, dict or `DatasetSpec`), an embedded data set name
    (`digits-halves`, `synthetic-omics`), a `MultiViewData` or a `RayMultiView`. `run_name` +
    `storage_path` name the run's folder: running again with the name of a stopped run resumes it.
    `resume_from` (a checkpoint file or directory) starts from that checkpoint's weights, optimiser
    state and epoch, with its schema and model config. Bad input (spec, model name or parameters,
    config fields, a resource request the cluster cannot meet) is a `ValueError` raised before any
    worker starts; Ctrl-C is a `RunInterrupted`, the checkpoints kept."""
    resume = str(resume_from) if resume_from is not None else None
    state = resume_state(resume, model)
    if state is not None:
        model_params = dict(state["model_config"])
    if isinstance(data, str | Path | Mapping | DatasetSpec) and not (isinstance(data, str) and data in DATASETS):
        validate_spec(data)  # a bad spec is a ValueError before Ray starts
    given = set(model_params or {}) | (set(train_config) if isinstance(train_config, Mapping) else set())
    request = make_request(
        model,
        model_params,
        train_config,
        resources=Resources(num_workers, use_gpu, resources_per_worker, wait_for_resources),
        storage=Storage(str(storage_path or DEFAULT_STORAGE), run_name, max_failures, checkpoint_every, resume),
        likelihoods=likelihoods,
        scalings=scalings,
    )
    return train(request, data, callbacks, given=given, num_partitions=num_partitions, preview_rows=preview_rows)


__all__ = [
    "RunInterrupted",
    "RunResult",
    "prepare_for",
    "resume_state",
    "run_config_for",
    "local_trial",
    "train_once",
    "run_training",
    "start_ray",
    "train",
    "train_distributed",
    "worker_plan",
]
