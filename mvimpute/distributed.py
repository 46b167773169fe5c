"""Training under Ray Train: the in-process `TrainingLoop`, run per worker with DDP.

Three steps, each usable alone. `prepare_data` reads the data with Ray Data (a spec, an embedded
data set or in-memory views), splits it by a stable hash of the id (the rule `MultiViewImputer.fit`
uses too) and fits the view schema (scaling statistics) in one streaming pass — once, however many
runs follow. `run_training` is the Ray Train runner: given prepared data and a `ray.train.RunConfig`
(name, storage, failure policy, callbacks such as Tune's), it runs a `TorchTrainer` and changes
nothing it is given: each worker wraps the model with `ray.train.torch.prepare_model` (the model's
forward is its loss, so gradients synchronise), feeds `TrainingLoop` with batches from its shard of
the training data, scores the same validation split as `fit` and reports a self-describing
checkpoint every `checkpoint_every` epochs. `train_distributed` does both with a run config of its
own: a worker that fails is restarted from the last checkpoint (`max_failures`); a stopped run is
resumed by running again with the same `run_name` and `storage_path`, or from any checkpoint with
`resume_from`. `run_local_trial` runs the workers' loop inside a Ray Tune trial's own process.

The `train` job (config, MLflow, registration) is `jobs_train.train_main`, importable from here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .batch import MultiViewBatch
from .checkpoint import CHECKPOINT_FILE, checkpoint_dict, checkpoint_file, read_checkpoint, view_infos
from .config import DEFAULT_STORAGE, TrainConfig, TrainJobConfig, load_job_config
from .config import train_config as _train_config
from .data.datasets import DATASETS
from .data.multiview import MultiViewData, ViewSchema
from .data.ray_data import RayMultiView, batch_from_tensors, read_dataset
from .data.spec import DatasetSpec, validate_spec
from .models import MODEL_REGISTRY, build_model
from .models.base import LIKELIHOODS, config_from_kwargs
from .training import (
    AFTER_FIT_ROWS,
    VAL_SEED_OFFSET,  # noqa: F401  (kept importable here)
    TrainingLoop,
    ValidationSet,
    epoch_seed,
    make_validation_set,
    shuffled_chunk_batches,
    steps_per_epoch,
)

FAULT_ENV = "MVIMPUTE_FAULT_INJECT"  # "epoch:rank:marker-file" — a test hook: that worker fails once, after that epoch
SHUFFLE_CHUNK_ROWS = 4096  # rows a worker takes from Ray Data at once and shuffles into mini-batches


@dataclass
class DistributedResult:
    """What a distributed run leaves: the final checkpoint directory and what it records."""

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

    def imputer(self, device: str = "cpu"):
        """The trained model as a `MultiViewImputer` (rebuilt from the checkpoint alone)."""
        from .imputer import MultiViewImputer

        return MultiViewImputer.load(self.checkpoint_path, device=device)


# ----------------------------------------------------------------------------- worker side


def _clean(metrics: Mapping) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float | np.floating | np.integer)}


def _metric_reducer(world: int, device: torch.device):
    """Average the training losses over workers, take rank 0's validation scores."""
    if world <= 1:
        return None
    import torch.distributed as dist

    def reduce(metrics: dict[str, float]) -> dict[str, float]:
        keys = sorted(metrics)
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
        mean = t.clone()
        dist.all_reduce(mean)
        mean /= world
        dist.broadcast(t, src=0)
        return {k: float(mean[i] if k.startswith("train_") else t[i]) for i, k in enumerate(keys)}

    return reduce


def validation_set_from_batches(
    batches: Iterable[Mapping], views: list[str], config: TrainConfig
) -> ValidationSet | None:
    """The self-supervised validation set of `fit`, from tensor batches (rows put in id order first)."""
    parts = [dict(b) for b in batches]
    parts = [p for p in parts if len(p.get("id", ())) > 0]
    if not parts:
        return None
    merged = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    order = np.argsort(merged["id"].astype(str), kind="stable")
    batch = batch_from_tensors({k: a[order] for k, a in merged.items()}, views)
    if len(batch) < 2:
        return None
    return make_validation_set(batch, config)


def build_validation_set(val: RayMultiView, schema: ViewSchema, config: TrainConfig) -> ValidationSet | None:
    """The validation set a distributed run scores on, built on the driver (for checks and reports)."""
    ds = val.tensor_dataset(schema, with_id=True)
    return validation_set_from_batches(
        ds.iter_batches(batch_size=4096, batch_format="numpy"), schema.view_names, config
    )


def _load_state(path: str | Path, what: str = "checkpoint") -> dict:
    return read_checkpoint(path, "cpu", what=what)


class _RayTrainEnv:
    """Where a Ray Train worker's loop gets its rank, device, data and checkpoint, and reports to."""

    def __init__(self, use_gpu: bool) -> None:
        import ray.train
        import ray.train.torch

        self.train = ray.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")

    def checkpoint(self):
        return self.train.get_checkpoint()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # DDP over the workers, on the worker's device

    def dataset(self, name: str):
        return self.train.get_dataset_shard(name)

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = self.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self.train.report(metrics, checkpoint=ckpt)


class _TuneTrialEnv:
    """The same for a Tune trial that runs the loop in its own process (`tune.runner=local`): one
    process, the prepared datasets read directly, reports and checkpoints through Tune."""

    rank, world = 0, 1

    def __init__(self, datasets: Mapping, use_gpu: bool) -> None:
        import ray.tune

        self.tune, self.datasets = ray.tune, datasets
        self.device = torch.device("cuda" if use_gpu else "cpu")  # Tune sets CUDA_VISIBLE_DEVICES per trial

    def checkpoint(self):
        return self.tune.get_checkpoint()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def dataset(self, name: str):
        return self.datasets[name]

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = self.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self.tune.report(metrics, checkpoint=ckpt)


def _train_worker(config: dict) -> None:
    """Per-worker training function (Ray Train)."""
    _train_loop(config, _RayTrainEnv(config["use_gpu"]))


def _train_loop(config: dict, env) -> None:
    """The training run of one worker (`_RayTrainEnv`) or of one local Tune trial (`_TuneTrialEnv`):
    resume from the run's checkpoint, train with `TrainingLoop`, report every epoch, checkpoint every
    `checkpoint_every` epochs and at the end (after `after_fit`)."""
    rank, world, device = env.rank, env.world, env.device
    cfg = TrainConfig(**config["train_config"])
    torch.manual_seed(cfg.seed)
    schema = ViewSchema.from_state(config["schema"])
    views = schema.view_names
    model = build_model(config["model"], view_infos(schema), **config["model_params"])

    state = None
    ckpt = env.checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = _load_state(d)
    elif config.get("resume_from"):
        state = _load_state(config["resume_from"])
    if state is not None:
        model.load_state_dict(state["state_dict"])

    wrapped = env.prepare_model(model)
    loop = TrainingLoop(wrapped, cfg, device, reduce_metrics=_metric_reducer(world, device))
    if state is not None and state.get("loop") is not None:
        loop.load_state_dict(state["loop"])
    attempts = [*(state or {}).get("attempts", []), loop.epoch]

    val_set = None
    if config["has_validation"]:
        val_shard = env.dataset("val")
        val_set = validation_set_from_batches(val_shard.iter_batches(batch_size=4096, batch_format="numpy"), views, cfg)
    shard = env.dataset("train")
    chunk_rows = max(SHUFFLE_CHUNK_ROWS, 16 * cfg.batch_size)

    def batches(epoch: int) -> Iterable[MultiViewBatch]:
        chunks = shard.iter_torch_batches(batch_size=chunk_rows, device=device)
        for b in shuffled_chunk_batches(chunks, cfg.batch_size, epoch_seed(cfg.seed, epoch)):
            yield batch_from_tensors(b, views)

    tracking = config.get("tracking")
    fault = config.get("fault")
    every = max(1, int(config["checkpoint_every"]))

    def extra(final: bool) -> dict:
        return {
            "loop": loop.state_dict(),
            "history": loop.result.history,
            "attempts": attempts,
            "distributed": {
                "num_workers": world,
                "final": final,
                "run_name": config["run_name"],
                "n_train": config["n_train"],
            },
            "imputer": config["imputer"],
            "data": config["data_source"],
        }

    placement = {}
    if config.get("report_placement_group"):
        from ray.util import get_current_placement_group

        pg = get_current_placement_group()
        placement = {"train_placement_group": pg.id.hex()} if pg is not None else {}

    def report(metrics: dict, save: bool, final: bool = False) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            written = None
            if rank == 0 and save:
                torch.save(checkpoint_dict(loop.module, schema, cfg, extra(final)), os.path.join(tmp, CHECKPOINT_FILE))
                written = tmp
            env.report({**_clean(metrics), **placement}, written)

    def selection(metrics: dict) -> dict:
        """The run's score so far for a scheduler or a search: the best selectable epoch's score
        (after a warm-up), else this epoch's."""
        best = loop.result.best_score
        now = metrics.get(cfg.select_metric if config["has_validation"] else "train_loss", float("nan"))
        return {"score": float(best if np.isfinite(best) else now), "best_epoch": loop.result.best_epoch}

    def on_epoch(epoch: int, metrics: dict, improved: bool) -> None:
        if rank == 0 and tracking:
            from .tracking import log_epoch_metrics

            log_epoch_metrics(tracking, metrics, step=epoch + 1)
        report({**metrics, **selection(metrics)}, save=(epoch + 1) % every == 0 or epoch + 1 == cfg.epochs)
        if rank == 0 and config.get("lines") is not None:
            config["lines"].put_nowait(epoch_line(metrics, cfg.epochs, improved))
        if fault and rank == fault["rank"] and epoch + 1 == fault["epoch"] and not os.path.exists(fault["marker"]):
            Path(fault["marker"]).write_text(f"failed after epoch {epoch}\n")
            raise RuntimeError(f"injected failure on worker {rank} after epoch {epoch} ({FAULT_ENV})")

    loop.run(batches, config["steps_per_epoch"], val_set, on_epoch=on_epoch, show_progress=False)
    module = loop.module
    module.eval()
    if rank == 0:
        full = env.dataset("fit")
        module.after_fit(
            lambda: (
                batch_from_tensors(b, views) for b in full.iter_torch_batches(batch_size=AFTER_FIT_ROWS, device=device)
            )
        )
    best = loop.result
    summary = {
        "epoch": loop.epoch,
        "final": 1.0,
        "best_epoch": best.best_epoch,
        "best_score": best.best_score,
        "score": best.best_score,
    }
    report(summary, save=True, final=True)


# ----------------------------------------------------------------------------- driver side


class ResourceRequestError(ValueError):
    """A Ray Train request the cluster cannot meet (more workers than CPUs, GPUs where there are none)."""


def plan_worker_resources(
    num_workers: int,
    use_gpu: bool = False,
    resources_per_worker: Mapping[str, float] | None = None,
    cluster: Mapping[str, float] | None = None,
    wait_for_resources: bool = False,
) -> dict[str, float]:
    """Resources for each Ray Train worker that leave room for Ray Data's tasks, checked against `cluster`
    (`ray.cluster_resources()`) so that a request the cluster cannot meet fails now, naming it.

    Ray Train reserves its workers' resources for the whole run and Ray Data schedules its read and
    transform tasks (1 CPU each) in what is left: on 2 CPUs, two 1-CPU workers leave none and the
    run waits for ever. By default each worker gets `min(1, (CPUs - 1) / num_workers)` CPUs (one CPU
    kept for Ray Data; fractional CPUs when the cluster is small) and one GPU with `use_gpu`.
    An explicit `resources_per_worker` is used as given but must leave one CPU free as well.
    `wait_for_resources` (autoscaling clusters, whose nodes appear on demand) skips the checks.
    """
    cluster = dict(cluster or {})
    total_cpu = float(cluster.get("CPU", 0.0))
    total_gpu = float(cluster.get("GPU", 0.0))
    if resources_per_worker:
        res = {k: float(v) for k, v in resources_per_worker.items()}
        if use_gpu:
            res.setdefault("GPU", 1.0)
    else:
        cpu = 1.0 if wait_for_resources else min(1.0, max(total_cpu - 1.0, 0.0) / num_workers)
        res = {"CPU": round(cpu, 4)}
        if use_gpu:
            res["GPU"] = 1.0
    if wait_for_resources:
        return res
    have = f"the cluster has {total_cpu:g} CPU(s) and {total_gpu:g} GPU(s)"
    if use_gpu and total_gpu < num_workers * res.get("GPU", 1.0):
        raise ResourceRequestError(
            f"asked for {num_workers} worker(s) with {res.get('GPU', 1.0):g} GPU each (--use-gpu), but {have}; "
            "train on CPUs (--no-gpu) or, on an autoscaling cluster, set cluster.wait_for_resources=true"
        )
    if num_workers > total_cpu or total_cpu < 2.0:
        raise ResourceRequestError(
            f"asked for {num_workers} worker(s), but {have}: each worker needs a share of a CPU and Ray Data "
            f"one CPU for its tasks; use --num-workers {max(int(total_cpu) - 1, 1)} or fewer on a cluster of at "
            "least 2 CPUs (cluster.wait_for_resources=true where it autoscales)"
        )
    need = num_workers * res.get("CPU", 0.0)
    if total_cpu - need < 1.0 - 1e-9:
        raise ResourceRequestError(
            f"asked for {num_workers} worker(s) × {res} = {need:g} CPU(s), but {have}: that leaves "
            f"{max(total_cpu - need, 0):g} CPU for Ray Data's tasks (they need 1) and the run would wait for ever; "
            "lower cluster.resources_per_worker.CPU or --num-workers"
        )
    return res


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


def _sigint_seen() -> bool:
    return _SIGINT.is_set()


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


def epoch_line(metrics: Mapping, epochs: int, improved: bool) -> str:
    """`epoch 3/30 train_loss=41.2 val_rmse=0.27 (1.0 s) *` — epochs numbered from 1, `*` marks the best so far."""
    shown = " ".join(f"{k}={metrics[k]:.4g}" for k in ("train_loss", "val_rmse", "val_crps") if k in metrics)
    secs = metrics.get("epoch_seconds", float("nan"))
    return f"epoch {int(metrics['epoch'])}/{epochs} {shown} ({secs:.1f} s){' *' if improved else ''}"


class _EpochLines:
    """A Ray queue that rank 0 puts its epoch lines on and a driver thread that prints them.

    Written here because Ray Train V2 has no driver-side hook per report (its `UserCallback`s run in
    the controller actor, whose output reaches the driver only with every worker's log lines)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.queue = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _EpochLines:
        if self.enabled:
            from ray.util.queue import Queue

            self.queue = Queue(actor_options={"num_cpus": 0})
            self._thread = threading.Thread(target=self._pump, daemon=True)
            self._thread.start()
        return self

    def _drain(self, timeout: float | None) -> None:
        import ray
        from ray.util.queue import Empty

        items = []
        try:
            if timeout:
                items.append(self.queue.get(timeout=timeout))
            items.extend(self.queue.get_nowait_batch(self.queue.qsize()))
        except (Empty, ray.exceptions.RayError):  # nothing yet, or the queue's actor is gone
            pass
        for line in items:
            print(line, flush=True)

    def _pump(self) -> None:
        while not self._stop.is_set():
            self._drain(timeout=0.5)

    def __exit__(self, *exc) -> None:
        if self.queue is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if exc[0] is None:
            self._drain(timeout=None)
        self.queue.shutdown()


def _fault_from_env() -> dict | None:
    raw = os.environ.get(FAULT_ENV)
    if not raw:
        return None
    try:
        epoch, rank, marker = raw.split(":", 2)
        return {"epoch": int(epoch), "rank": int(rank), "marker": marker}
    except ValueError:
        raise ValueError(f"{FAULT_ENV} must read 'epoch:rank:marker-file', got {raw!r}") from None


@dataclass(frozen=True)
class PreparedData:
    """A data set read, split and scaled once, ready for any number of Ray Train runs (Tune trials).

    `datasets` are the tensor datasets the workers read ("train", "fit" for the pass after training,
    "val" when there is a validation split); `val_frac` and `seed` are the split's."""

    train: RayMultiView
    val: RayMultiView | None
    schema: ViewSchema
    n_train: int
    datasets: dict
    val_frac: float
    seed: int
    imputer: dict
    source: dict

    def check_split(self, config: TrainConfig) -> None:
        if (config.val_frac, config.seed) != (self.val_frac, self.seed):
            raise ValueError(
                f"the data were split with val_frac={self.val_frac}, seed={self.seed}; this run asks for "
                f"val_frac={config.val_frac}, seed={config.seed}: prepare the data again"
            )


def _merge_choices(rmv: RayMultiView, likelihoods: Mapping | None, scalings: Mapping | None) -> RayMultiView:
    """The data set with the given per-view likelihoods/scalings over its own (a new object)."""
    for name, given in (("likelihoods", likelihoods), ("scalings", scalings)):
        unknown = sorted(set(given or {}) - set(rmv.columns))
        if unknown:
            raise ValueError(f"{name} name unknown view(s) {unknown}; views are {rmv.view_names}")
    for v, lk in (likelihoods or {}).items():
        if lk not in LIKELIHOODS:
            raise ValueError(f"view {v!r}: unknown likelihood {lk!r}; choose one of {LIKELIHOODS}")
    return dataclasses.replace(
        rmv,
        likelihoods={**rmv.likelihoods, **dict(likelihoods or {})},
        scalings={**rmv.scalings, **dict(scalings or {})},
    )


def prepare_data(
    data,
    train_config: TrainConfig | Mapping | None = None,
    *,
    likelihoods: Mapping[str, str] | None = None,
    scalings: Mapping[str, str] | None = None,
    schema: ViewSchema | None = None,
    n_train: int | None = None,
    num_partitions: int | None = None,
    materialize: bool = False,
) -> PreparedData:
    """Read `data` (spec, embedded name, `MultiViewData` or `RayMultiView`), split it by the id hash
    (`train_config.val_frac`, `.seed`) and fit the schema on the training rows — once.

    `schema` (with `n_train`), e.g. a checkpoint's, is used instead of fitting one. `materialize`
    keeps the scaled tensor datasets in Ray's object store, so that many runs (a sweep's trials)
    read them without reading or scaling the data again. Nothing given is changed. Bad data (±Inf,
    empty rows, non-numeric values) is a `ValueError` naming the view and column."""
    cfg = _train_config(train_config)
    rmv = _merge_choices(read_dataset(data, num_partitions=num_partitions), likelihoods, scalings)
    if rmv.source.get("joined"):
        rmv = dataclasses.replace(rmv, dataset=rmv.dataset.materialize())  # the id join runs once
    train, val = rmv.split(cfg.val_frac, cfg.seed)
    if schema is not None and schema.columns != rmv.columns:
        raise ValueError("the given schema was fitted on other views/columns than this data set")
    if schema is None or n_train is None:
        fitted, n_train = train.fit_schema()  # validates the data (±Inf, empty rows, non-numeric)
        schema = schema or fitted
    has_val = cfg.val_frac > 0
    datasets = {"train": train.tensor_dataset(schema)}
    if has_val:
        datasets["val"] = val.tensor_dataset(schema, with_id=True)
    if materialize:
        datasets = {k: ds.materialize() for k, ds in datasets.items()}
    datasets["fit"] = datasets["train"]
    for ds in datasets.values():
        # workers re-read their shard every epoch: Ray Data's bars would print a screenful per epoch
        # through the driver's log, so these datasets run without them; rank 0 prints a line per epoch
        ds.context.enable_progress_bars = False
    return PreparedData(
        train=train,
        val=val if has_val else None,
        schema=schema,
        n_train=int(n_train),
        datasets=datasets,
        val_frac=cfg.val_frac,
        seed=cfg.seed,
        imputer={"likelihoods": dict(rmv.likelihoods), "scalings": dict(rmv.scalings)},
        source=json.loads(json.dumps(rmv.source, default=str)),
    )


def check_run_request(model: str, model_params: Mapping | None, train_config, num_workers: int = 1) -> tuple:
    """(model_params, TrainConfig) checked: unknown model or field names are `ValueError`s naming them."""
    if model not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODEL_REGISTRY)}")
    model_params = dict(model_params or {})
    config_from_kwargs(MODEL_REGISTRY[model].config_class, model_params, model)
    if num_workers < 1:
        raise ValueError(f"num_workers must be ≥ 1, got {num_workers}")
    return model_params, _train_config(train_config)


def _loop_config(
    prepared: PreparedData,
    model: str,
    model_params: Mapping,
    cfg: TrainConfig,
    *,
    num_workers: int,
    use_gpu: bool,
    checkpoint_every: int,
    resume_from,
    tracking: Mapping | None,
    fault: Mapping | None,
    run_name: str | None,
    report_placement_group: bool,
) -> dict:
    """What `_train_loop` reads: the run's model, config, schema and reporting choices (plain values).
    Checks the request first, so that a bad one fails on the driver, not in a worker."""
    prepared.check_split(cfg)
    build_model(model, view_infos(prepared.schema), **model_params)
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be ≥ 1, got {checkpoint_every}")
    return {
        "model": model,
        "model_params": dict(model_params),
        "train_config": asdict(cfg),
        "schema": prepared.schema.state(),
        "use_gpu": use_gpu,
        "has_validation": "val" in prepared.datasets,
        "steps_per_epoch": steps_per_epoch(prepared.n_train, cfg.batch_size, num_workers),
        "n_train": prepared.n_train,
        "checkpoint_every": checkpoint_every,
        "resume_from": str(checkpoint_file(resume_from)) if resume_from is not None else None,
        "tracking": dict(tracking) if tracking else None,
        "fault": dict(fault) if fault else None,
        "run_name": run_name,
        "lines": None,
        "imputer": dict(prepared.imputer),
        "data_source": prepared.source,
        "report_placement_group": report_placement_group,
    }


def run_local_trial(
    prepared: PreparedData,
    model: str,
    model_params: Mapping,
    train_config: TrainConfig,
    *,
    use_gpu: bool = False,
    checkpoint_every: int = 1,
    tracking: Mapping | None = None,
    run_name: str | None = None,
) -> None:
    """The training loop of `run_training`'s workers, run inside a Ray Tune trial's own process
    (called from a Tune function): no Ray Train controller or worker group to start, the prepared
    datasets read directly, per-epoch reports and checkpoints through `ray.tune.report`, a restored
    trial resumed from its last Tune checkpoint. One process: DDP needs `run_training`."""
    config = _loop_config(
        prepared,
        model,
        model_params,
        train_config,
        num_workers=1,
        use_gpu=use_gpu,
        checkpoint_every=checkpoint_every,
        resume_from=None,
        tracking=tracking,
        fault=None,
        run_name=run_name,
        report_placement_group=False,
    )
    _train_loop(config, _TuneTrialEnv(prepared.datasets, use_gpu))


def run_training(
    prepared: PreparedData,
    model: str,
    model_params: Mapping,
    train_config: TrainConfig,
    *,
    run_config,
    num_workers: int = 1,
    use_gpu: bool = False,
    worker_resources: Mapping[str, float] | None = None,
    checkpoint_every: int = 1,
    resume_from: str | Path | None = None,
    tracking: Mapping | None = None,
    fault: Mapping | None = None,
    preview_rows: int = 8,
    echo: bool = False,
    report_placement_group: bool = False,
) -> DistributedResult:
    """The Ray Train runner: one `TorchTrainer` run of `model` on `prepared` data.

    `run_config` (a `ray.train.RunConfig`: name, storage, failure policy, callbacks such as Tune's
    `TuneReportCallback`) and `worker_resources` (see `plan_worker_resources`) are used as given;
    nothing given is changed. Each worker report carries the epoch's metrics plus `score` (the
    best selectable epoch's `select_metric` so far) and `best_epoch`; with `report_placement_group`,
    also the id of the workers' placement group (`train_placement_group`), so that whoever stops the
    run from outside (a Tune scheduler) can release it."""
    import ray
    import ray.train

    cfg = train_config
    loop_config = _loop_config(
        prepared,
        model,
        model_params,
        cfg,
        num_workers=num_workers,
        use_gpu=use_gpu,
        checkpoint_every=checkpoint_every,
        resume_from=resume_from,
        tracking=tracking,
        fault=fault,
        run_name=run_config.name,
        report_placement_group=report_placement_group,
    )
    trainer = _trainer_class()(
        _train_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker=dict(worker_resources) if worker_resources else None,
        ),
        run_config=run_config,
        datasets=dict(prepared.datasets),
        # one worker reads the whole training set: no split, so no SplitCoordinator actor between it and the data
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"] if num_workers > 1 else []),
    )
    run_name, storage = run_config.name, str(run_config.storage_path)
    with _EpochLines(echo) as lines:
        loop_config["lines"] = lines.queue
        try:
            result = trainer.fit()
        except KeyboardInterrupt:
            raise RunInterrupted(run_name, storage) from None
        except ray.exceptions.RayActorError as err:  # Ray Train's own Ctrl-C handler kills the controller
            if _sigint_seen():
                raise RunInterrupted(run_name, storage) from None
            raise RuntimeError(f"run {run_name!r}: the Ray Train controller died ({err})") from None
    if result.checkpoint is None:
        raise RuntimeError(f"run {run_name!r} finished without a checkpoint")
    ckpt_dir = Path(result.checkpoint.path)
    if not (ckpt_dir / CHECKPOINT_FILE).is_file():  # remote storage: bring the final checkpoint here
        ckpt_dir = Path(result.checkpoint.to_directory(tempfile.mkdtemp(prefix="mvimpute-ckpt-")))
    state = _load_state(ckpt_dir)
    preview = None
    if prepared.val is not None and preview_rows > 0:
        val = prepared.val
        preview = RayMultiView(
            val.dataset.limit(preview_rows), val.id_column, val.columns, prepared.schema.likelihoods
        ).to_multiview()
        if preview.n_samples == 0:
            preview = None
    return DistributedResult(
        checkpoint_path=ckpt_dir,
        history=list(state.get("history", [])),
        best_epoch=int(state["loop"]["best_epoch"]),
        run_name=run_name,
        storage_path=storage,
        schema=ViewSchema.from_state(state["schema"]),
        model=model,
        attempts=list(state.get("attempts", [])),
        preview=preview,
        ray_result=result,
    )


def storage_uri(storage_path: str | Path | None) -> str:
    """A storage path for Ray (local paths made absolute: workers run in other directories)."""
    storage = str(storage_path or DEFAULT_STORAGE)
    return storage if "://" in storage else str(Path(storage).resolve())


def train_distributed(
    data,
    model: str = "jpvae",
    model_params: Mapping | None = None,
    train_config: TrainConfig | Mapping | None = None,
    *,
    num_workers: int = 1,
    use_gpu: bool = False,
    resources_per_worker: Mapping[str, float] | None = None,
    checkpoint_every: int = 1,
    storage_path: str | Path | None = None,
    run_name: str | None = None,
    resume_from: str | Path | None = None,
    max_failures: int = 2,
    likelihoods: Mapping[str, str] | None = None,
    scalings: Mapping[str, str] | None = None,
    tracking: Mapping | None = None,
    num_partitions: int | None = None,
    preview_rows: int = 8,
    wait_for_resources: bool = False,
    echo: bool = False,
) -> DistributedResult:
    """Train `model` on `data` with Ray Train (DDP over `num_workers` workers): `prepare_data` then
    `run_training` with a run config of its own.

    `data`: a dataset spec (YAML path, dict or `DatasetSpec`), an embedded data set name
    (`digits-halves`, `synthetic-omics`), a `MultiViewData`, a `RayMultiView` or a `PreparedData`.
    `run_name` + `storage_path` name the run's folder: running again with the name of a stopped
    run resumes it from its last checkpoint. `resume_from` (a checkpoint file or directory, e.g.
    from another run) starts from that checkpoint's weights, optimiser state and epoch, with its
    schema. `tracking` (`{"tracking_uri", "run_id"}`) makes rank 0 log per-epoch metrics to MLflow.
    Worker resources come from `plan_worker_resources` (room left for Ray Data; a request the
    cluster cannot meet is a `ResourceRequestError` before any worker starts). `echo` prints one
    line per epoch on the driver (rank 0 sends it through a Ray queue, so workers' own output
    need not reach the driver). Ctrl-C aborts the run; its last checkpoint stays in the run's
    folder, and running again with the same `run_name` resumes it.
    Bad input (spec, model name or parameters, config fields) is a `ValueError` raised before any
    worker starts.
    """
    import ray
    import ray.train

    model_params, cfg = check_run_request(model, model_params, train_config, num_workers)
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be ≥ 1, got {checkpoint_every}")
    fault = _fault_from_env()
    resume_state = None
    if resume_from is not None:
        if not checkpoint_file(resume_from).is_file():
            raise ValueError(f"resume_from: no checkpoint at {str(resume_from)!r}")
        resume_state = _load_state(resume_from, what="resume_from")
        if resume_state.get("model") != model:
            raise ValueError(f"resume_from holds a {resume_state.get('model')!r} model, not {model!r}")
        model_params = dict(resume_state["model_config"])

    if isinstance(data, str | Path | Mapping | DatasetSpec) and not (isinstance(data, str) and data in DATASETS):
        validate_spec(data)  # a bad spec is a ValueError before Ray starts
    if not ray.is_initialized():
        from .console import ray_init_kwargs

        ray.init(**ray_init_kwargs())
    worker_resources = plan_worker_resources(
        num_workers, use_gpu, resources_per_worker, ray.cluster_resources(), wait_for_resources
    )
    if isinstance(data, PreparedData):
        prepared = data
    else:
        schema = n_train = None
        if resume_state is not None:  # the checkpoint's scaling, so that the weights see the data they were trained on
            schema = ViewSchema.from_state(resume_state["schema"])
            n_train = resume_state.get("distributed", {}).get("n_train")
        try:
            prepared = prepare_data(
                data,
                cfg,
                likelihoods=likelihoods,
                scalings=scalings,
                schema=schema,
                n_train=n_train,
                num_partitions=num_partitions,
            )
        except ValueError as err:
            if resume_state is not None and "schema was fitted on other" in str(err):
                raise ValueError("resume_from was trained on other views/columns than this data set") from None
            raise
    storage = storage_uri(storage_path)
    run_config = ray.train.RunConfig(
        name=run_name or f"{model}-{dt.datetime.now():%Y%m%d-%H%M%S-%f}",
        storage_path=storage,
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=3),
    )
    return run_training(
        prepared,
        model,
        model_params,
        cfg,
        run_config=run_config,
        num_workers=num_workers,
        use_gpu=use_gpu,
        worker_resources=worker_resources,
        checkpoint_every=checkpoint_every,
        resume_from=resume_from,
        tracking=tracking,
        fault=fault,
        preview_rows=preview_rows,
        echo=echo,
    )


# the train job lives in `jobs_train`; its names stay importable from here
from .jobs_train import TrainJobResult, summary_lines, train_main  # noqa: E402

__all__ = [
    "DistributedResult",
    "PreparedData",
    "ResourceRequestError",
    "RunInterrupted",
    "TrainJobConfig",
    "TrainJobResult",
    "build_validation_set",
    "epoch_line",
    "load_job_config",
    "plan_worker_resources",
    "prepare_data",
    "run_training",
    "summary_lines",
    "train_distributed",
    "train_main",
    "validation_set_from_batches",
]
