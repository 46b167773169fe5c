"""The `tune` job: a job config (the train job's sections plus `tune`) → a Ray Tune search of Ray Train
runs → the best completed trial registered as `models:/mvimpute-<model>@champion`.

    mvimpute tune --data digits-halves --model jpvae --epochs 20 --num-samples 8

The data are read, split and scaled once and every trial reuses them. The sweep's state lives under
`cluster.storage_path/<name>`: an interrupted sweep resumes (`--resume --name`), finished trials
kept. MLflow: one parent run per sweep with the results table and a plot of score against the swept
parameters, one child run per trial; only the best completed trial's model is logged and registered.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import storage
from ..config import TuneJobConfig, flag_overrides, load_job_config
from ..engine.callbacks import RunCallback, run_with_callbacks
from ..engine.prepare import prepare_data, read_data
from ..engine.resources import plan_sweep_resources
from ..engine.runner import start_ray
from ..engine.search import (
    SearchSettings,
    SearchSpace,
    Trial,
    default_space,
    fault_from_env,
    load_space,
    run_search,
    selection_start_of,
)
from ..names import AUTO
from .train import check_data, given_keys, job_request

PLOT_PARAMS = {"tae": ["model_params.C", "model_params.lam"], "jpvae": ["model_params.alpha"]}


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


def _state_file(storage_path: str, name: str) -> str:
    """Where a sweep keeps what resuming it needs (its job config, its MLflow run): beside its Tune
    state, in the sweep's storage (a local folder or a URI), so a driver elsewhere finds it."""
    return storage.join(storage_path, f"{name}.sweep.json")


def _load(config, overrides: Sequence[str], flags: Mapping, resume: bool, name: str | None):
    """(job config, saved sweep state or None); a resumed sweep runs the job config it saved."""
    job = load_job_config(config, [*overrides, *flag_overrides(flags)], kind=TuneJobConfig)
    if not resume:
        return job, None
    if not name:
        raise ValueError("resume needs the sweep's name (--name)")
    where = job_request(job).storage.path
    saved = _state_file(where, name)
    if not storage.exists(saved):
        raise ValueError(f"no sweep named {name!r} under {where}: nothing to resume")
    state = json.loads(storage.read_text(saved))
    return load_job_config(state["job"], kind=TuneJobConfig), state


def _settings(job: TuneJobConfig, request, space: SearchSpace, name: str, concurrency: int) -> SearchSettings:
    t = job.tune
    return SearchSettings(
        space=space,
        name=name,
        storage=request.storage.path,
        # model="auto": every candidate's trials are in the grid once; ranked on the final models' scores
        num_samples=1 if job.model == AUTO else t.num_samples,
        rank_by="final_score" if job.model == AUTO else "score",
        concurrency=concurrency,
        search=t.search,
        scheduler=t.scheduler,
        grace_period=t.grace_period,
        reduction_factor=t.reduction_factor,
        runner=t.runner,
        selection_start=selection_start_of(request, space),
    )


def trial_count(job: TuneJobConfig, space) -> int:
    """How many trials the sweep runs, which bounds how many run at once: `num_samples`, or for
    model="auto" every candidate's trials (`num_samples` per model with a space, one per model without),
    so that a cluster runs the candidates side by side even at `num_samples=1`."""
    return space.n_trials if job.model == AUTO else job.tune.num_samples


def _resolve_runner(job: TuneJobConfig) -> None:
    """`tune.runner=auto`: local for one worker per trial, else train — resolved once and saved, so a
    resumed sweep keeps it."""
    if job.tune.runner == "auto":
        job.tune.runner = "local" if job.cluster.num_workers == 1 else "train"
    if job.tune.runner == "local" and job.cluster.num_workers != 1:
        raise ValueError(
            f"tune.runner=local trains each trial in one process: cluster.num_workers must be 1, "
            f"got {job.cluster.num_workers} (use tune.runner=train for DDP trials)"
        )


class SweepRun(RunCallback):
    """The sweep's parent MLflow run: started (or adopted when resuming), then, at the end, the results
    table and plot, trials the scheduler stopped marked KILLED, the champion logged and registered."""

    def __init__(self, job: TuneJobConfig, space: SearchSpace, parent: dict | None) -> None:
        self.job, self.space, self.parent, self.model_uri = job, space, parent, None

    def on_start(self, name: str, request) -> None:
        from .. import tracking as tr

        if self.parent is None:
            ref = tr.start_run(
                self.job.mlflow.experiment, name, self.job.mlflow.tracking_uri,
                tags={"mlflow.source.name": "mvimpute.tune"},
            )  # fmt: skip
            self.parent = ref.as_dict()
            tune = {**self.job.tune.model_dump(mode="json"), "space": self.space.path}
            tr.log_config(ref, {**self.job.model_dump(mode="json"), "tune": tune})

    def on_end(self, outcome, status: str) -> None:
        from .. import tracking as tr

        ref = tr.RunRef(**self.parent)
        try:
            if outcome is not None:
                self.model_uri = track_sweep(ref, self.job, self.space, outcome.table, outcome.best)
                if getattr(outcome, "selection", None) is not None:
                    from .auto import log_selection

                    log_selection(ref, outcome.selection)
                status = status if outcome.num_errors == 0 else "FAILED"
        finally:
            tr.end_run(ref, status)


def tune_main(
    config: str | Path | Mapping | None = None,
    overrides: Sequence[str] = (),
    *,
    resume: bool = False,
    echo: bool = True,
    **flags,
) -> SweepResult:
    """The `tune` job. `flags` override the config, as the command line's options do: space,
    num_samples, max_concurrent_trials, search, scheduler, name, tracking_uri, tracking, and the
    train job's (see `config.FLAG_KEYS`). With `resume`, the sweep named `name` (under
    `cluster.storage_path`) continues where it stopped: trials that finished are kept, unfinished and
    failed ones run again (from their last checkpoint)."""
    t0 = time.perf_counter()
    name = flags.get("name")
    job, state = _load(config, overrides, flags, resume, name)
    request = job_request(job)
    if job.model == AUTO:  # a grid over the candidates, each with its own space: Optuna cannot take it
        from .auto import candidate_space

        job.tune.search = "random"
        sp = candidate_space(job, job.tune.num_samples)
    else:
        space_path = job.tune.space or str(default_space(job.model))
        sp = load_space(space_path, job.model)  # a bad space fails before Ray, MLflow or any trial
    _resolve_runner(job)
    check_data(job)
    sweep_name = job.tune.name or (state or {}).get("name") or f"{job.model}-sweep-{dt.datetime.now():%Y%m%d-%H%M%S}"

    trial_res, worker_res, concurrency = plan_sweep_resources(
        job.cluster.num_workers, job.tune.max_concurrent_trials, trial_count(job, sp), start_ray(),
        job.cluster.use_gpu, job.cluster.wait_for_resources,
    )  # fmt: skip
    if job.tune.runner == "local":  # the trial's process is the worker: it holds the worker's resources
        trial_res = dict(worker_res)
    settings = _settings(job, request, sp, sweep_name, concurrency)
    sweep_run = SweepRun(job, sp, (state or {}).get("parent")) if job.mlflow.enabled else None
    callbacks = [sweep_run] if sweep_run else []
    outcome = run_with_callbacks(
        callbacks, sweep_name, request,
        lambda: _search(job, request, settings, sweep_run, (trial_res, worker_res), resume, echo),
    )  # fmt: skip
    best = outcome.best
    parent = sweep_run.parent if sweep_run else None
    result = SweepResult(
        name=sweep_name,
        path=settings.path,
        table=outcome.table,
        best_trial=None if best is None else best["trial_id"],
        best_score=math.nan if best is None else float(best["score"]),
        best_checkpoint=None if best is None else best["checkpoint"],
        model_uri=sweep_run.model_uri if sweep_run else None,
        parent_run_id=parent["run_id"] if parent else None,
        tracking_uri=parent["tracking_uri"] if parent else None,
        wall_seconds=time.perf_counter() - t0,
        result_grid=outcome.grid,
    )
    if echo:
        for line in sweep_summary(result):
            print(line, flush=True)
    return result


def _search(
    job: TuneJobConfig, request, settings: SearchSettings, sweep_run, resources: tuple, resume: bool, echo: bool
):
    """Save the sweep's state, prepare the data once (with the data-size defaults of `fit` on the keys
    the job leaves open), run the search, write its table and plot."""
    trial_res, worker_res = resources
    parent = sweep_run.parent if sweep_run else None
    saved = {"name": settings.name, "job": job.model_dump(mode="json"), "parent": parent}
    storage.write_text(_state_file(settings.storage, settings.name), json.dumps(saved))
    rmv = read_data(job.data, request.likelihoods, request.scalings)
    request = request.sized_for(rmv.dataset.count(), given_keys(job))
    prepared = prepare_data(rmv, request.train, materialize=True)
    trial_callbacks = None
    if parent is not None:
        from .. import tracking as tr
        from .tracking import TrialRuns

        trial_callbacks = TrialRuns(tr.RunRef(**parent), job.mlflow.experiment, settings.name)
    candidates = None
    if job.model == AUTO:
        from .auto import candidate_job, settings_of

        n = rmv.dataset.count()
        candidates = {}
        for name, params in settings_of(job).candidates.items():
            cj = candidate_job(job, name, params)
            candidates[name] = job_request(cj).sized_for(n, given_keys(cj))
    trial = Trial(request, prepared, settings, worker_res, trial_callbacks, fault_from_env(), candidates)
    outcome = run_search(trial, resume=resume, trial_resources=trial_res, echo=echo)
    if job.model == AUTO:
        _auto_champion(job, request, outcome)
    write_outputs(settings.path, job, settings.space, outcome.table)
    return outcome


def _auto_champion(job: TuneJobConfig, request, outcome) -> None:
    """model="auto": the champion is the best trial of the model the tie rule picks; its checkpoint
    gets the candidates' table (`selection`), which the outcome keeps for the sweep's MLflow run."""
    from .auto import add_selection, selection_from_table, settings_of

    table = outcome.table
    selection, trial_id = selection_from_table(table, settings_of(job), f"val_{request.train.val_score}")
    outcome.selection = selection
    if trial_id is None:
        return
    table["champion"] = table["trial_id"] == trial_id
    outcome.best = table.loc[table["champion"]].iloc[0]
    add_selection(outcome.best["checkpoint"], selection)


def _plot(job: TuneJobConfig, sp: SearchSpace, table):
    from .. import plots

    if job.model == AUTO:  # the swept "parameter" is the model's name: the results table says it all
        return None
    params = [p for p in PLOT_PARAMS.get(job.model, sp.swept()) if p in table] or sp.swept()[:4]
    return plots.sweep_scores(table, params, "score", sp.log_scale()) if len(table) else None


def write_outputs(path: str, job: TuneJobConfig, sp: SearchSpace, table) -> None:
    """The results table in the sweep's folder too (`results.csv`), and locally the score plot (`scores.png`)."""
    storage.write_text(storage.join(path, "results.csv"), table.to_csv(index=False))
    if storage.is_uri(path):
        return
    from .. import plots

    fig = _plot(job, sp, table)
    if fig is not None:
        plots.save(fig, Path(path) / "scores.png")


def track_sweep(parent, job: TuneJobConfig, sp: SearchSpace, table, best) -> str | None:
    """The parent run's table, plot and summary; trials the scheduler stopped marked KILLED; the best
    completed trial's model logged in its child run and registered with the alias."""
    from .. import tracking as tr

    children = {r.data.tags.get("mvimpute.trial_id"): r for r in tr.child_runs(parent)}
    for _, row in table.iterrows():
        run = children.get(row["trial_id"])
        if run is not None and not row["completed"] and not isinstance(row["error"], str):
            # stopped by the scheduler: its run may still read RUNNING (the actor was killed) or FAILED
            # (its Ray Train run failed as its placement group was released)
            tr.end_run(tr.run_ref(parent, run.info.run_id), "KILLED")
    table["mlflow_run_id"] = [children[t].info.run_id if t in children else None for t in table["trial_id"]]
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
    tr.log_sweep_outputs(parent, table, _plot(job, sp, table), summary, tags)
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


__all__ = ["SweepResult", "sweep_summary", "tune_main"]
