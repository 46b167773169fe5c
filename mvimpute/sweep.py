"""Hyper-parameter sweeps with Ray Tune: a `Tuner` over Ray Train runs, the winner registered as `champion`.

`load_space` reads a search-space YAML (`tune_spaces/<model>.yaml`): sections `model_params` and
`train` mirror the job config, each key a field of the model's config or of `TrainConfig`, each
value a Tune domain written `{loguniform: [1, 50]}`, `{choice: [a, b]}`, ... or a plain value
(fixed). A bad file is a `ValueError` naming the key before any trial starts.

`tune_main` is the `tune` job. The data are read, split and scaled once (`prepare_data`, kept in
Ray's object store) and every trial reuses them. Each trial is a Tune function that runs the Ray
Train runner (`run_training`) with Tune's `TuneReportCallback` — the Train-inside-Tune pattern of
Ray Train V2 — so that the trial's workers report each epoch to Tune. Trials are ranked by
`score`: the best selectable epoch's validation score (`val_score`, chosen by `train.val_score`:
crps or rmse; for TAE only epochs after the warm-up). ASHA stops poor trials at its rungs; Optuna
(TPE) or random search proposes them. The sweep's state lives under `cluster.storage_path/<name>`:
an interrupted sweep resumes with `Tuner.restore` (`resume=True`), finished trials kept. MLflow:
one parent run per sweep with the results table and a plot of score against the swept parameters,
one child run per trial (params, per-epoch metrics); only the best completed trial's model is
logged and registered, with the alias `champion`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .config import TrainConfig, TuneJobConfig, load_job_config

# name in the YAML → (Tune function name, number of arguments or None for a list of options)
DOMAINS = {
    "uniform": ("uniform", 2),
    "quniform": ("quniform", 3),
    "loguniform": ("loguniform", 2),
    "qloguniform": ("qloguniform", 3),
    "randint": ("randint", 2),
    "qrandint": ("qrandint", 3),
    "lograndint": ("lograndint", 2),
    "qlograndint": ("qlograndint", 3),
    "randn": ("randn", 2),
    "choice": ("choice", None),
    "grid": ("grid_search", None),
}
FIXED_FOR_SWEEP = {"epochs", "val_frac", "seed", "device", "progress", "val_score"}  # one per sweep
SPACES_DIR = "tune_spaces"
TRIAL_CPU = 0.01  # a trial's own actor only waits on its Ray Train run (whose controller takes 0 CPU)
FAULT_ENV = "MVIMPUTE_TUNE_FAULT_INJECT"  # "trial-index:marker-file": a test hook, that trial fails once
PLOT_PARAMS = {"tae": ["model_params.C", "model_params.lam"], "jpvae": ["model_params.alpha"]}


# ----------------------------------------------------------------------------- the search space


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: `{"model_params": {...}, "train": {...}}` of (domain, args) or fixed values."""

    path: str
    model: str | None
    entries: dict  # section → key → ("fixed", value) | (domain name, args)

    def keys(self) -> list[str]:
        return [f"{sec}.{k}" for sec, items in self.entries.items() for k in items]

    def swept(self) -> list[str]:
        return [f"{sec}.{k}" for sec, items in self.entries.items() for k, (d, _) in items.items() if d != "fixed"]

    def log_scale(self) -> tuple[str, ...]:
        return tuple(
            f"{sec}.{k}" for sec, items in self.entries.items() for k, (d, _) in items.items() if d.startswith("log")
        )

    def uses_grid(self) -> bool:
        return any(d == "grid" for items in self.entries.values() for d, _ in items.values())

    def param_space(self) -> dict:
        """The Tune `param_space` (nested like the job config)."""
        from ray import tune

        out: dict = {}
        for sec, items in self.entries.items():
            part = out.setdefault(sec, {})
            for k, (d, args) in items.items():
                if d == "fixed":
                    part[k] = args
                elif DOMAINS[d][1] is None:
                    part[k] = getattr(tune, DOMAINS[d][0])(list(args))
                else:
                    part[k] = getattr(tune, DOMAINS[d][0])(*args)
        return out

    def corners(self) -> list[dict]:
        """Configs at the low and high ends of every range (and each option of each list), to check before
        any trial that every value the space can propose is one the model and the loop accept."""

        def pick(which: int | None, opt: int | None = None, target: str | None = None) -> dict:
            out: dict = {}
            for sec, items in self.entries.items():
                for k, (d, args) in items.items():
                    if d == "fixed":
                        v = args
                    elif DOMAINS[d][1] is None:
                        v = args[opt] if (opt is not None and f"{sec}.{k}" == target) else args[0 if which == 0 else -1]
                    elif d == "randn":
                        v = float(args[0])
                    else:
                        lo, hi = args[0], args[1]
                        v = lo if which == 0 else (hi - 1 if d.endswith("randint") and d != "qrandint" else hi)
                    out.setdefault(sec, {})[k] = v
            return out

        configs = [pick(0), pick(1)]
        for sec, items in self.entries.items():
            for k, (d, args) in items.items():
                if d in ("choice", "grid"):
                    configs += [pick(0, i, f"{sec}.{k}") for i in range(len(args))]
        return configs


def _domain(where: str, value):
    """(domain name, args) or ("fixed", value) from one YAML value; a `ValueError` naming `where`."""
    if not isinstance(value, Mapping):
        if isinstance(value, list):
            raise ValueError(f"{where}: a list must be written as {{choice: [...]}} or {{grid: [...]}}")
        return "fixed", value
    if len(value) != 1:
        raise ValueError(f"{where}: one distribution per key, e.g. {{loguniform: [1, 50]}}; got {dict(value)}")
    ((name, args),) = value.items()
    if name not in DOMAINS:
        raise ValueError(f"{where}: unknown distribution {name!r}; known: {sorted(DOMAINS)}")
    n = DOMAINS[name][1]
    if not isinstance(args, list) or not args:
        raise ValueError(f"{where}: {name} takes a list, e.g. {name}: {'[a, b]' if n is None else list(range(n))}")
    if n is None:
        return name, list(args)
    if len(args) != n or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        raise ValueError(f"{where}: {name} takes {n} numbers, got {args}")
    if name != "randn":
        lo, hi = args[0], args[1]
        if not lo < hi:
            raise ValueError(f"{where}: {name} needs low < high, got {args}")
        if name.startswith(("log", "qlog")) and lo <= 0:
            raise ValueError(f"{where}: {name} needs a positive low end, got {lo}")
    return name, list(args)


def load_space(path: str | Path, model: str) -> SearchSpace:
    """Read and check a search-space YAML for `model`; every problem is a `ValueError` naming the key."""
    from .models import MODEL_REGISTRY
    from .models.base import config_from_kwargs

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"search space {str(path)!r}: no such file")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"search space {str(path)!r}: not valid YAML ({err})") from None
    if not isinstance(raw, Mapping):
        raise ValueError(f"search space {str(path)!r}: expected a mapping with model_params and/or train")
    unknown = sorted(set(raw) - {"model", "model_params", "train"})
    if unknown:
        raise ValueError(f"search space {str(path)!r}: unknown section(s) {unknown}; use model, model_params, train")
    if raw.get("model") not in (None, model):
        raise ValueError(f"search space {str(path)!r}: model: written for {raw['model']!r}, the sweep trains {model!r}")
    model_fields = {f.name for f in fields(MODEL_REGISTRY[model].config_class)}
    train_fields = {f.name for f in fields(TrainConfig)} - FIXED_FOR_SWEEP
    entries: dict = {}
    for sec, known in (("model_params", model_fields), ("train", train_fields)):
        items = raw.get(sec) or {}
        if not isinstance(items, Mapping):
            raise ValueError(f"search space {str(path)!r}: {sec} must be a mapping of key: distribution")
        for key, value in items.items():
            where = f"search space {str(path)!r}: {sec}.{key}"
            if sec == "train" and key in FIXED_FOR_SWEEP:
                raise ValueError(f"{where}: fixed for the whole sweep; set it with the job config or its option")
            if key not in known:
                raise ValueError(f"{where}: not a field of the {model} config; fields are {sorted(known)}")
            entries.setdefault(sec, {})[key] = _domain(where, value)
    if not entries:
        raise ValueError(f"search space {str(path)!r}: no keys to sweep")
    space = SearchSpace(str(path), raw.get("model"), entries)
    cfg_class = MODEL_REGISTRY[model].config_class
    for corner in space.corners():  # a value the model or the loop rejects fails now, naming the field
        where = f"search space {str(path)!r}"
        try:
            config_from_kwargs(cfg_class, corner.get("model_params", {}), model)
            TrainConfig(**corner.get("train", {}))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: a value it can propose is rejected: {err}") from None
    return space


def default_space(model: str) -> Path:
    """`tune_spaces/<model>.yaml` here, else the one beside the package (a source checkout)."""
    here = Path(SPACES_DIR) / f"{model}.yaml"
    beside = Path(__file__).resolve().parents[1] / SPACES_DIR / f"{model}.yaml"
    return here if here.is_file() or not beside.is_file() else beside


# ----------------------------------------------------------------------------- resources


def plan_sweep_resources(
    num_workers: int,
    max_concurrent: int | None,
    num_samples: int,
    cluster: Mapping[str, float],
    use_gpu: bool = False,
    wait_for_resources: bool = False,
) -> tuple[dict, dict, int]:
    """(trial actor resources, per-worker resources, concurrent trials) that fit the cluster with one CPU
    left to Ray Data's tasks, so that no trial waits for ever: by default as many trials at once as
    the CPUs hold (one on 2 CPUs), each worker `min(1, (CPUs − 1 − trials × 0.01) / (trials × workers))` CPU."""
    from .distributed import ResourceRequestError, plan_worker_resources

    total = float(cluster.get("CPU", 0.0))
    c = max_concurrent or max(1, min(num_samples, int((total - 1) // num_workers) if total >= 2 else 1))
    trial = {"CPU": TRIAL_CPU}
    if wait_for_resources:
        return trial, plan_worker_resources(num_workers, use_gpu, None, cluster, True), c
    avail = total - 1.0 - c * TRIAL_CPU
    if avail <= 0 or num_workers * c > total:
        raise ResourceRequestError(
            f"asked for {c} concurrent trial(s) × {num_workers} worker(s), but the cluster has {total:g} CPU(s) "
            f"and Ray Data needs one: use --max-concurrent-trials {max(1, int(max(total - 1, 1) // num_workers))} "
            "or fewer workers"
        )
    per = {"CPU": round(min(1.0, avail / (num_workers * c)), 4)}
    if use_gpu:
        per["GPU"] = 1.0
    plan_worker_resources(num_workers * c, use_gpu, per, cluster)  # the cluster-wide checks (GPUs, CPU left)
    return trial, per, c


# ----------------------------------------------------------------------------- one trial


def _maybe_fail(trial_id: str, raw: str | None) -> None:
    """The test hook `FAULT_ENV` ("N:marker-file", read on the driver): the (N+1)-th trial to start
    fails, once."""
    if not raw:
        return
    index, marker = raw.split(":", 1)
    seen = Path(f"{marker}.trials")
    seen.mkdir(parents=True, exist_ok=True)
    (seen / trial_id).touch()
    if len(list(seen.iterdir())) == int(index) + 1 and not os.path.exists(marker):
        Path(marker).write_text(f"trial {trial_id} failed\n")
        raise RuntimeError(f"injected failure of trial {trial_id} ({FAULT_ENV})")


def trial_settings(job: Mapping, config: Mapping) -> tuple[dict, TrainConfig]:
    """A trial's model parameters and `TrainConfig`: the job's, with the trial's sampled values over them."""
    model_params = {**job["model_params"], **dict(config.get("model_params") or {})}
    train = {**job["train"], **dict(config.get("train") or {}), "progress": False}
    return model_params, TrainConfig(**train)


def run_trial(config: dict, *, prepared, job: dict, sweep: dict) -> None:
    """One trial (a Tune function), tracked in a child run: the Ray Train runner with Tune's report
    callback, or with `tune.runner=local` the same training loop in this process (`run_local_trial`)."""
    import ray.train
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .distributed import run_local_trial, run_training

    ctx = ray.tune.get_context()
    trial_id = ctx.get_trial_id()
    model_params, cfg = trial_settings(job, config)
    child = None
    if sweep.get("parent"):
        from . import tracking as tr

        parent = tr.RunRef(**sweep["parent"])
        child = tr.start_run(
            job["mlflow"]["experiment"],
            f"{sweep['name']}-{trial_id}",
            parent.tracking_uri,
            parent_run_id=parent.run_id,
            tags={"mvimpute.trial_id": trial_id, "mlflow.source.name": "mvimpute.tune"},
        )
        tr.log_config(
            child,
            {
                "trial_id": trial_id,
                "model": job["model"],
                "model_params": model_params,
                "train": {k: v for k, v in vars(cfg).items() if k != "progress"},
            },
        )
    status = "FAILED"
    try:
        _maybe_fail(trial_id, sweep.get("fault"))
        if job["tune"]["runner"] == "local":
            run_local_trial(
                prepared,
                job["model"],
                model_params,
                cfg,
                use_gpu=job["cluster"]["use_gpu"],
                checkpoint_every=job["cluster"]["checkpoint_every"],
                tracking=child.as_dict() if child else None,
                run_name=trial_id,
            )
            status = "FINISHED"
            return
        run_config = ray.train.RunConfig(
            name=trial_id,  # a restored sweep's trial resumes its Ray Train run from its last checkpoint
            storage_path=sweep["train_storage"],
            failure_config=ray.train.FailureConfig(max_failures=job["cluster"]["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        )
        run_training(
            prepared,
            job["model"],
            model_params,
            cfg,
            run_config=run_config,
            num_workers=job["cluster"]["num_workers"],
            use_gpu=job["cluster"]["use_gpu"],
            worker_resources=sweep["worker_resources"],
            checkpoint_every=job["cluster"]["checkpoint_every"],
            tracking=child.as_dict() if child else None,
            preview_rows=0,
            report_placement_group=True,
        )
        status = "FINISHED"
    finally:
        if child is not None:
            from . import tracking as tr

            tr.end_run(child, status)


# ----------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    name: str
    path: str
    table: object  # pandas DataFrame: one row per trial
    best_trial: str | None
    best_score: float
    best_checkpoint: str | None
    model_uri: str | None
    parent_run_id: str | None
    tracking_uri: str | None
    wall_seconds: float
    result_grid: object = None


def release_placement_group(hex_id: str | None) -> bool:
    """Remove a trial's Ray Train placement group if it is still held; True when one was removed.

    Written here because a trial that Tune stops (ASHA) is killed with its Ray Train controller, and
    Ray Train V2's own clean-up of the workers' placement group asks the State API (the dashboard),
    which a Ray started without a dashboard lacks: the CPUs stay reserved and the next trial waits
    for ever."""
    if not hex_id:
        return False
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    pg = PlacementGroup(PlacementGroupID(bytes.fromhex(hex_id)))
    state = ray.util.placement_group_table(pg).get("state")
    if state in (None, "REMOVED"):
        return False
    remove_placement_group(pg)
    return True


class _TrialLines:
    """A Tune callback (runs on the driver): releases a finished trial's Ray Train placement group
    if its run was stopped from outside, and prints one line per finished trial."""

    def __new__(cls, total: int, echo: bool):
        from ray.tune import Callback

        class Lines(Callback):
            def __init__(self) -> None:
                self.done = 0

            def _line(self, trial, what: str) -> None:
                self.done += 1
                r = trial.last_result or {}
                params = " ".join(f"{k.split('/')[-1]}={_fmt(v)}" for k, v in _flat(trial.config).items())
                score = r.get("score")
                text = f"score={score:.4g}" if isinstance(score, int | float) else "no score"
                print(f"trial {self.done}/{total} {what}: {params} {text} (epoch {r.get('epoch', 0):g})", flush=True)

            def on_trial_complete(self, iteration, trials, trial, **info) -> None:
                release_placement_group((trial.last_result or {}).get("train_placement_group"))
                if echo:
                    self._line(trial, "done" if (trial.last_result or {}).get("final") else "stopped early")

            def on_trial_error(self, iteration, trials, trial, **info) -> None:
                release_placement_group((trial.last_result or {}).get("train_placement_group"))
                if echo:
                    self._line(trial, "failed")

        return Lines()


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _flat(config: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def results_table(grid, swept: Sequence[str]):
    """One row per trial: its sampled values, score, best epoch, epochs run, completed (ran to the end and
    saved its final model) or stopped early, and its final checkpoint."""
    import pandas as pd

    rows = []
    for r in grid:
        m = r.metrics or {}
        flat = _flat(r.config or {})
        completed = bool(m.get("final")) and r.error is None
        rows.append(
            {
                "trial_id": m.get("trial_id"),
                **{k: flat.get(k) for k in swept},
                "score": float(m.get("score", math.nan)),
                "best_epoch": int(m.get("best_epoch", 0) or 0),
                "epochs_run": int(m.get("epoch", 0) or 0),
                "completed": completed,
                "error": None if r.error is None else type(r.error).__name__,
                # a Ray Train run's checkpoint reaches Tune as a metric; a local trial's is Tune's own
                "checkpoint": (m.get("checkpoint_path") or (r.checkpoint.path if r.checkpoint else None))
                if completed
                else None,
            }
        )
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values("trial_id", kind="stable").reset_index(drop=True)
    return table


def _check_search(kind: str, space: SearchSpace) -> None:
    if kind == "optuna" and space.uses_grid():
        raise ValueError(f"search space {space.path!r}: grid needs --search random (Optuna samples, never grids)")


def _searcher(kind: str, seed: int, space: SearchSpace, max_concurrent: int):
    """The search, running at most `max_concurrent` trials at once. Tune ignores `max_concurrent_trials`
    for a `BasicVariantGenerator` it is handed, so the limit goes to the generator itself: without it
    every trial starts at once and waits for workers, and ASHA, seeing the trials in the order their
    workers happen to start, cannot stop a bad trial that reports first. `tune_main` has already
    checked the pair (`_check_search`)."""
    if kind == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))  # Tune wraps it in a ConcurrencyLimiter
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)


def _scheduler(job: TuneJobConfig, cfg: TrainConfig, selection_start: float):
    if job.tune.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    warm = math.ceil(selection_start * cfg.epochs - 1e-9)
    # time in epochs; max_t beyond the last epoch, so that ASHA never ends a trial before its final report
    return ASHAScheduler(
        time_attr="epoch",
        max_t=cfg.epochs + 1,
        grace_period=max(job.tune.grace_period, warm, 1),
        reduction_factor=job.tune.reduction_factor,
    )


def _items(overrides: Sequence[str], flags: Mapping) -> list[str]:
    items = list(overrides)
    for key, value in flags.items():
        if value is not None:
            items.append(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    return items


def tune_main(
    config: str | Path | Mapping | None = None,
    overrides: Sequence[str] = (),
    *,
    space: str | Path | None = None,
    num_samples: int | None = None,
    max_concurrent_trials: int | None = None,
    search: str | None = None,
    scheduler: str | None = None,
    name: str | None = None,
    tracking_uri: str | None = None,
    tracking: bool | None = None,
    resume: bool = False,
    echo: bool = True,
) -> SweepResult:
    """The `tune` job: a job config (the train job's sections plus `tune`) → a Ray Tune sweep of Ray
    Train runs → the best completed trial registered as `models:/mvimpute-<model>@champion`.

    With `resume`, the sweep named `name` (under `cluster.storage_path`) continues where it stopped:
    trials that finished are kept, unfinished and failed ones run again (from their last checkpoint)."""
    import ray
    from ray import tune

    from .distributed import check_run_request, prepare_data, storage_uri
    from .training import selection_start

    t0 = time.perf_counter()
    flags = {
        "tune.space": str(space) if space is not None else None,
        "tune.num_samples": num_samples,
        "tune.max_concurrent_trials": max_concurrent_trials,
        "tune.search": search,
        "tune.scheduler": scheduler,
        "tune.name": name,
        "mlflow.tracking_uri": tracking_uri,
        "mlflow.enabled": tracking,
    }
    storage = None
    if resume:
        if not name:
            raise ValueError("resume needs the sweep's name (--name)")
        job0 = load_job_config(config, _items(overrides, flags), kind=TuneJobConfig)
        storage = storage_uri(job0.cluster.storage_path)
        saved = Path(storage) / f"{name}.sweep.json"
        if not saved.is_file():
            raise ValueError(f"no sweep named {name!r} under {storage}: nothing to resume")
        state = json.loads(saved.read_text())
        job = load_job_config(state["job"], kind=TuneJobConfig)
    else:
        job = load_job_config(config, _items(overrides, flags), kind=TuneJobConfig)
        state = None
    model_params, cfg = check_run_request(job.model, job.model_params, job.train, job.cluster.num_workers)
    space_path = job.tune.space or str(default_space(job.model))
    sp = load_space(space_path, job.model)  # a bad space fails before Ray, MLflow or any trial
    if job.tune.runner == "auto":  # resolved once, and saved so that a resumed sweep keeps it
        job.tune.runner = "local" if job.cluster.num_workers == 1 else "train"
    if job.tune.runner == "local" and job.cluster.num_workers != 1:
        raise ValueError(
            f"tune.runner=local trains each trial in one process: cluster.num_workers must be 1, "
            f"got {job.cluster.num_workers} (use tune.runner=train for DDP trials)"
        )
    _check_search(job.tune.search, sp)
    from .models import MODEL_REGISTRY
    from .models.base import config_from_kwargs

    cfg_class = MODEL_REGISTRY[job.model].config_class
    warm = max(  # where selection starts (TAE: the end of its warm-up), the latest the space can propose
        selection_start(config_from_kwargs(cfg_class, {**model_params, **c.get("model_params", {})}, job.model))
        for c in sp.corners()
    )
    if job.data.endswith((".yaml", ".yml")):
        from .data.spec import validate_spec

        validate_spec(job.data)
    storage = storage or storage_uri(job.cluster.storage_path)
    sweep_name = job.tune.name or (state or {}).get("name") or f"{job.model}-sweep-{dt.datetime.now():%Y%m%d-%H%M%S}"

    if not ray.is_initialized():
        from .console import ray_init_kwargs

        ray.init(**ray_init_kwargs())
    trial_res, worker_res, concurrency = plan_sweep_resources(
        job.cluster.num_workers,
        job.tune.max_concurrent_trials,
        job.tune.num_samples,
        ray.cluster_resources(),
        job.cluster.use_gpu,
        job.cluster.wait_for_resources,
    )
    if job.tune.runner == "local":  # the trial's process is the worker: it holds the worker's resources
        trial_res = dict(worker_res)
    searcher = _searcher(job.tune.search, cfg.seed, sp, concurrency)

    parent = None
    if job.mlflow.enabled:
        from . import tracking as tr

        if state and state.get("parent"):
            parent = tr.RunRef(**state["parent"])
        else:
            parent = tr.start_run(
                job.mlflow.experiment, sweep_name, job.mlflow.tracking_uri, tags={"mlflow.source.name": "mvimpute.tune"}
            )
            tr.log_config(
                parent,
                {**job.model_dump(mode="json"), "tune": {**job.tune.model_dump(mode="json"), "space": space_path}},
            )
    Path(storage).mkdir(parents=True, exist_ok=True)
    saved = {"name": sweep_name, "job": job.model_dump(mode="json"), "parent": parent.as_dict() if parent else None}
    (Path(storage) / f"{sweep_name}.sweep.json").write_text(json.dumps(saved))

    status = "FAILED"
    try:
        prepared = prepare_data(job.data, cfg, likelihoods=job.likelihoods, scalings=job.scalings, materialize=True)
        sweep = {
            "name": sweep_name,
            "parent": parent.as_dict() if parent else None,
            "train_storage": str(Path(storage) / f"{sweep_name}-trials")
            if "://" not in storage
            else f"{storage}/{sweep_name}-trials",
            "worker_resources": worker_res,
            "fault": os.environ.get(FAULT_ENV),
        }
        job_dict = {**job.model_dump(mode="json"), "model_params": model_params}
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, prepared=prepared, job=job_dict, sweep=sweep), trial_res
        )
        lines = _TrialLines(job.tune.num_samples * (2 if sp.uses_grid() else 1), echo)
        path = f"{storage}/{sweep_name}"
        if resume and tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=sp.param_space(),
                tune_config=tune.TuneConfig(
                    metric="score",
                    mode="min",
                    num_samples=job.tune.num_samples,
                    # the random search limits itself (`_searcher`); Tune limits Optuna
                    max_concurrent_trials=concurrency if job.tune.search == "optuna" else None,
                    search_alg=searcher,
                    scheduler=_scheduler(job, cfg, warm),
                    # a local trial's process is kept for the next trial: a fresh one first pays
                    # torch's lazy imports (≈ 1.7 s of `torch._dynamo` at the optimiser's first use)
                    reuse_actors=job.tune.runner == "local",
                ),
                run_config=tune.RunConfig(
                    name=sweep_name,
                    storage_path=storage,
                    failure_config=tune.FailureConfig(max_failures=0),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),  # local trials' checkpoints
                    callbacks=[lines],
                    verbose=0,
                ),
            )
        grid = tuner.fit()
        table = results_table(grid, sp.swept())
        done = table[table["completed"]] if len(table) else table
        best = done.loc[done["score"].idxmin()] if len(done) else None
        table["champion"] = table["trial_id"] == (best["trial_id"] if best is not None else None)
        model_uri = None
        if parent is not None:
            model_uri = _track_sweep(parent, job, sp, table, best)
        _write_outputs(path, job, sp, table)
        status = "FINISHED" if grid.num_errors == 0 else "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if parent is not None:
            tr.end_run(parent, status)
    result = SweepResult(
        name=sweep_name,
        path=path,
        table=table,
        best_trial=None if best is None else best["trial_id"],
        best_score=math.nan if best is None else float(best["score"]),
        best_checkpoint=None if best is None else best["checkpoint"],
        model_uri=model_uri,
        parent_run_id=parent.run_id if parent else None,
        tracking_uri=parent.tracking_uri if parent else None,
        wall_seconds=time.perf_counter() - t0,
        result_grid=grid,
    )
    if echo:
        for line in sweep_summary(result):
            print(line, flush=True)
    return result


def _plot(job: TuneJobConfig, sp: SearchSpace, table):
    from . import plots

    params = [p for p in PLOT_PARAMS.get(job.model, sp.swept()) if p in table] or sp.swept()[:4]
    return plots.sweep_scores(table, params, "score", sp.log_scale()) if len(table) else None


def _write_outputs(path: str, job: TuneJobConfig, sp: SearchSpace, table) -> None:
    """The results table and the score plot in the sweep's folder too (`results.csv`, `scores.png`)."""
    if "://" in path:
        return
    from . import plots

    table.to_csv(Path(path) / "results.csv", index=False)
    fig = _plot(job, sp, table)
    if fig is not None:
        plots.save(fig, Path(path) / "scores.png")


def _track_sweep(parent, job: TuneJobConfig, sp: SearchSpace, table, best) -> str | None:
    """The parent run's table, plot and summary; trials the scheduler stopped marked KILLED; the best
    completed trial's model logged in its child run and registered with the alias."""
    from . import tracking as tr

    children = {r.data.tags.get("mvimpute.trial_id"): r for r in tr.child_runs(parent)}
    for _, row in table.iterrows():
        run = children.get(row["trial_id"])
        if run is not None and not row["completed"] and not isinstance(row["error"], str):
            # stopped by the scheduler: its run may still read RUNNING (the actor was killed) or FAILED
            # (its Ray Train run failed as its placement group was released)
            tr.end_run(tr.run_ref(parent, run.info.run_id), "KILLED")
    table["mlflow_run_id"] = [children[t].info.run_id if t in children else None for t in table["trial_id"]]
    fig = _plot(job, sp, table)
    summary = {"trials": len(table), "trials_completed": int(table["completed"].sum()) if len(table) else 0}
    tags = {"sweep.space": sp.path}
    uri = None
    if best is not None:
        summary["best_score"] = float(best["score"])
        tags["sweep.champion_trial"] = best["trial_id"]
        child = children.get(best["trial_id"])
        if child is not None:
            ref = tr.run_ref(parent, child.info.run_id)
            logged = tr.log_model(ref, best["checkpoint"])
            uri = tr.register_model(ref, logged, job.registered_model_name, alias=job.mlflow.alias)
            tags["sweep.champion_run"] = child.info.run_id
            tags["sweep.model_uri"] = uri
    tr.log_sweep_outputs(parent, table, fig, summary, tags)
    return uri


def sweep_summary(result: SweepResult):
    t = result.table
    n_done = int(t["completed"].sum()) if len(t) else 0
    yield (
        f"sweep {result.name}: {len(t)} trials, {n_done} completed, {len(t) - n_done} stopped or failed "
        f"({result.wall_seconds:.0f} s)"
    )
    yield f"best trial {result.best_trial or '-'} (score {result.best_score:.4g})"
    yield f"MLflow run {result.parent_run_id or '-'}" + (f" at {result.tracking_uri}" if result.parent_run_id else "")
    yield f"model URI {result.model_uri or '-'}"
    yield f"sweep folder {result.path} (resume with --resume --name {result.name})"


__all__ = ["SearchSpace", "SweepResult", "load_space", "plan_sweep_resources", "results_table", "tune_main"]
