"""The Tune search: a search space read from YAML, and a `Tuner` whose trials each run the Ray Train
runner (or, with one worker, the same loop in the trial's own process) on data prepared once.

`load_space` reads `tune_spaces/<model>.yaml`: sections `model_params` and `train`, each key a field
of the model's config or of `TrainConfig`, each value a Tune domain written `{loguniform: [1, 50]}`,
`{choice: [a, b]}`, ... or a plain value (fixed); a bad file is a `ValueError` naming the key.
`run_search` ranks trials by `score` (the best selectable epoch's validation score), lets ASHA stop
poor ones and Optuna (TPE) or random search propose them, and restores an interrupted search.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from ..config import TrainConfig, read_yaml_mapping
from ..models import MODEL_REGISTRY
from ..models.base import config_from_kwargs
from .callbacks import RunCallback, run_with_callbacks
from .prepare import PreparedData
from .request import RunRequest
from .runner import local_trial, run_config_for, train_once

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
SYNC_PERIOD_S = 10  # the least time between two uploads of the search's state to its storage
FAULT_ENV = "MVIMPUTE_TUNE_FAULT_INJECT"  # "trial-index:marker-file": a test hook, that trial fails once


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
    raw = read_yaml_mapping(path, "search space", "a mapping with model_params and/or train")
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
    beside = Path(__file__).resolve().parents[2] / SPACES_DIR / f"{model}.yaml"
    return here if here.is_file() or not beside.is_file() else beside


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


def checkpoint_uri(path: str | None, storage: str) -> str | None:
    """A trial's checkpoint as the registry must read it: Ray names a checkpoint in object storage by
    its path inside the bucket (`bucket/sweep/trial/checkpoint_…`), without the scheme."""
    if path is None or "://" in str(path) or "://" not in storage:
        return path
    return f"{storage.split('://', 1)[0]}://{str(path).lstrip('/')}"


def results_table(grid, swept: Sequence[str], storage: str = ""):
    """One row per trial: its sampled values, score, best epoch, epochs run, completed (ran to the end and
    saved its final model) or stopped early, and its final checkpoint (a URI where `storage` is one)."""
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
                "final_score": float(m.get("final_score", math.nan)),  # the final model's (model="auto" ranks on it)
                "best_epoch": int(m.get("best_epoch", 0) or 0),
                "epochs_run": int(m.get("epoch", 0) or 0),
                "completed": completed,
                "error": None if r.error is None else type(r.error).__name__,
                # a Ray Train run's checkpoint reaches Tune as a metric; a local trial's is Tune's own
                "checkpoint": checkpoint_uri(m.get("checkpoint_path") or (r.checkpoint.path if r.checkpoint else None),
                                             storage)
                if completed
                else None,
            }
        )
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values("trial_id", kind="stable").reset_index(drop=True)
    return table


def _searcher(kind: str, seed: int, space: SearchSpace, max_concurrent: int):
    """The search, running at most `max_concurrent` trials at once. Tune ignores `max_concurrent_trials`
    for a `BasicVariantGenerator` it is handed, so the limit goes to the generator itself: without it
    every trial starts at once and waits for workers, and ASHA, seeing the trials in the order their
    workers happen to start, cannot stop a bad trial that reports first. `SearchSettings` has
    already checked the pair."""
    if kind == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))  # Tune wraps it in a ConcurrencyLimiter
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)


def _scheduler(settings: SearchSettings, epochs: int):
    if settings.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    warm = math.ceil(settings.selection_start * epochs - 1e-9)
    # time in epochs; max_t beyond the last epoch, so that ASHA never ends a trial before its final report
    return ASHAScheduler(
        time_attr="epoch",
        max_t=epochs + 1,
        grace_period=max(settings.grace_period, warm, 1),
        reduction_factor=settings.reduction_factor,
    )


@dataclass(frozen=True)
class SearchSettings:
    """How a search runs: its space, trials, search algorithm and scheduler, where it lives (`storage/name`),
    the trial runner (`train`: a Ray Train run per trial; `local`: the trial's own process trains)."""

    space: SearchSpace
    name: str
    storage: str
    num_samples: int = 8
    concurrency: int = 1
    search: str = "optuna"
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    runner: str = "local"
    selection_start: float = 0.0  # the latest warm-up end the space can propose, as a share of the epochs
    rank_by: str = "score"  # the table's column that picks the champion; "final_score" for model="auto"

    def __post_init__(self) -> None:
        if self.search == "optuna" and self.space.uses_grid():
            raise ValueError(
                f"search space {self.space.path!r}: grid needs --search random (Optuna samples, never grids)"
            )

    @property
    def path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def trial_storage(self) -> str:
        """Where each trial's Ray Train run keeps its checkpoints."""
        return f"{self.path}-trials"


def selection_start_of(request: RunRequest, space: SearchSpace) -> float:
    """Where selection starts (TAE: the end of its warm-up), the latest the space can propose."""
    from ..training import selection_start

    return max(selection_start(request.with_values(c.get("model_params")).model_config) for c in space.corners())


@dataclass(frozen=True)
class Trial:
    """What every trial of a search shares: the sweep's request, the data prepared once, the settings,
    the workers' resources, and `trial_callbacks(trial_id, request)` (e.g. a tracking run per trial)."""

    request: RunRequest
    prepared: PreparedData
    settings: SearchSettings
    worker_resources: Mapping[str, float]
    trial_callbacks: Callable[[str, RunRequest], Sequence[RunCallback]] | None = None
    fault: str | None = None
    candidates: Mapping[str, RunRequest] | None = None  # model="auto": each candidate's request, by name


def run_trial(config: dict, trial: Trial) -> None:
    """The Tune function: one trial, its sampled values over the sweep's request, run with the trial's
    callbacks by the Ray Train runner with Tune's report callback or, with `runner="local"`, in this
    process."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    if "candidate" in config:  # model="auto": the trial's candidate model, its sampled values over its request
        chosen = config["candidate"]
        request = trial.candidates[chosen["model"]].with_values(chosen.get("model_params"), chosen.get("train"))
    else:
        request = trial.request.with_values(config.get("model_params"), config.get("train"))
    request = request.with_storage(run_name=trial_id, path=trial.settings.trial_storage)
    callbacks = list(trial.trial_callbacks(trial_id, request)) if trial.trial_callbacks else []
    run_with_callbacks(callbacks, trial_id, request, lambda: _train_trial(trial, trial_id, request, callbacks))


def _train_trial(trial: Trial, trial_id: str, request: RunRequest, callbacks: list) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    _maybe_fail(trial_id, trial.fault)
    if _report_finished(trial.settings, trial_id, request):
        return
    if trial.settings.runner == "local":
        local_trial(request, trial.prepared, callbacks)
        return
    # a restored search's trial resumes its Ray Train run (named by the trial) from its last checkpoint
    run_config = run_config_for(request, [TuneReportCallback()], num_to_keep=2)
    train_once(request, trial.prepared, callbacks, trial.worker_resources, run_config, preview_rows=0,
               report_placement_group=True)  # fmt: skip


def _trial_checkpoints(settings: SearchSettings, trial_id: str, request: RunRequest) -> list[tuple[str, str]]:
    """(folder, run name) pairs under which a trial's checkpoints may lie: its Ray Train run's
    (`<path>-trials/<trial id>`), or for a local trial each of Tune's folders of the trial
    (`<path>/<…trial id…>`: a restored trial may get a new one beside the old)."""
    if settings.runner != "local":
        return [(request.storage.path, request.storage.run_name)]
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(settings.path)
    found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return [
        (settings.path, name)
        for name in sorted(i.base_name for i in found if i.type == pafs.FileType.Directory and trial_id in i.base_name)
    ]


def _report_finished(settings: SearchSettings, trial_id: str, request: RunRequest) -> bool:
    """A trial that already saved its final model (it ended after the last upload of the search state,
    then the driver died, and the restored search starts it again) reports that model's final result
    to Tune, as its run did, and trains nothing. Tune stores a search's state only every
    `SYNC_PERIOD_S`; the trial's own final checkpoint is the record that it ended."""
    import ray.tune

    from .worker import newest_checkpoint_at

    finals = [
        found
        for where in _trial_checkpoints(settings, trial_id, request)
        if (found := newest_checkpoint_at(*where)) is not None and (found[1].get("summary") or {}).get("final")
    ]
    if not finals:
        return False
    path, state = finals[-1]
    # the final checkpoint holds the very metrics its run reported last (`WorkerRun.run`)
    ray.tune.report({**state["summary"], "checkpoint_path": path, "restored": 1.0})
    return True


@dataclass
class SearchOutcome:
    """A finished search: one row per trial (`results_table`), the best completed one, Tune's results."""

    table: object
    best: object  # the best completed trial's row (a pandas Series), or None
    grid: object
    selection: dict | None = None  # model="auto": the candidates' table

    @property
    def num_errors(self) -> int:
        return self.grid.num_errors


def run_search(
    trial: Trial,
    resume: bool = False,
    trial_resources: Mapping[str, float] | None = None,
    echo: bool = True,
) -> SearchOutcome:
    """Run (or, with `resume`, continue) the search of `trial.settings`: finished trials are kept,
    unfinished and failed ones run again from their last checkpoint."""
    from ray import tune

    st, cfg = trial.settings, trial.request.train
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, trial=trial),  # the prepared data travel once, through the object store
        dict(trial_resources or trial.worker_resources),
    )
    total = getattr(st.space, "n_trials", None) or st.num_samples * (2 if st.space.uses_grid() else 1)
    lines = _TrialLines(total, echo)
    if resume and tune.Tuner.can_restore(st.path):
        tuner = tune.Tuner.restore(st.path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=st.space.param_space(),
            tune_config=tune.TuneConfig(
                metric="score",
                mode="min",
                num_samples=st.num_samples,
                # the random search limits itself (`_searcher`); Tune limits Optuna
                max_concurrent_trials=st.concurrency if st.search == "optuna" else None,
                search_alg=_searcher(st.search, cfg.seed, st.space, st.concurrency),
                scheduler=_scheduler(st, cfg.epochs),
                # a local trial's process is kept for the next trial: a fresh one first pays
                # torch's lazy imports (≈ 1.7 s of `torch._dynamo` at the optimiser's first use)
                reuse_actors=st.runner == "local",
            ),
            run_config=tune.RunConfig(
                name=st.name,
                storage_path=st.storage,
                failure_config=tune.FailureConfig(max_failures=0),
                # local trials' checkpoints, all kept: a restored search restores a trial from the one its
                # stored state names, which a trial that went on after that state was stored would have
                # pruned (Tune: "does not exist on storage anymore"). A Ray Train trial keeps its own two.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None if st.runner == "local" else 2),
                # the search's state reaches object storage every SYNC_PERIOD_S (Ray's default: 300 s), so a
                # driver that dies loses at most that much of it: trials that ended within it run again
                sync_config=tune.SyncConfig(sync_period=SYNC_PERIOD_S),
                callbacks=[lines],
                verbose=0,
            ),
        )
    grid = tuner.fit()
    table = results_table(grid, st.space.swept(), st.storage)
    done = table[table["completed"]] if len(table) else table
    ranked = done[done[st.rank_by].notna()] if len(done) else done
    best = ranked.loc[ranked[st.rank_by].idxmin()] if len(ranked) else None
    table["champion"] = table["trial_id"] == (best["trial_id"] if best is not None else None)
    return SearchOutcome(table, best, grid)


def fault_from_env() -> str | None:
    return os.environ.get(FAULT_ENV)


__all__ = [
    "DOMAINS",
    "FAULT_ENV",
    "SearchOutcome",
    "SearchSettings",
    "SearchSpace",
    "Trial",
    "default_space",
    "load_space",
    "release_placement_group",
    "results_table",
    "run_search",
    "run_trial",
    "selection_start_of",
]
