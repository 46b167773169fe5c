"""MLflow as engine callbacks: a run started (or adopted) at a run's start, per-epoch metrics from rank
0 of the workers, ended with the run's status — and, for a train job, the run's outputs logged and
the model registered once it finished. The engine only sees `RunCallback`s."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import tracking as tr
from ..engine.callbacks import FINISHED, RunCallback


class MlflowRun(RunCallback):
    """One MLflow run around one engine run. `start` (experiment, run name, tracking URI, parent, tags)
    starts it at `on_start` — in the process that drives the run, e.g. a Tune trial's; `config`
    (plain values) is logged with the request's resolved model and train settings over it. With
    `register` (registered model name, alias, number of draws for the figures), a finished run logs
    its outputs and registers the model; `model_uri` says where."""

    def __init__(self, start: Mapping, config: Mapping | None = None, register: Mapping | None = None) -> None:
        self.start, self.config, self.register = dict(start), dict(config or {}), register
        self.run: dict | None = None  # the RunRef's plain values, so that it travels to the workers
        self.model_uri: str | None = None

    @property
    def ref(self) -> tr.RunRef:
        return tr.RunRef(**self.run)

    def on_start(self, name: str, request: Any) -> None:
        ref = tr.start_run(**{"run_name": name, **self.start})
        self.run = ref.as_dict()
        settings = request.as_dict()
        resolved = {"model": request.model, "model_params": settings["model_params"], "train": settings["train"]}
        tr.log_config(ref, {**self.config, **resolved})

    def on_epoch(self, epoch: int, metrics: Mapping[str, float], improved: bool) -> None:
        tr.log_epoch_metrics(self.run, metrics, step=epoch + 1)

    def on_end(self, result: Any, status: str) -> None:
        if self.run is None:
            return
        try:
            if status == FINISHED and self.register is not None:
                self.model_uri = tr.log_training_outputs(self.ref, result, **self.register)
        except BaseException:
            status = "FAILED"
            raise
        finally:
            tr.end_run(self.ref, status)


class TrialRuns:
    """For a sweep: a child run of `parent` per trial (named `<sweep>-<trial id>`), tagged with the trial id;
    a trial run again (a restored search) takes up its run again."""

    def __init__(self, parent: tr.RunRef, experiment: str, sweep_name: str) -> None:
        self.parent, self.experiment, self.sweep_name = parent.as_dict(), experiment, sweep_name

    def __call__(self, trial_id: str, request: Any) -> list[RunCallback]:
        start = {
            "experiment": self.experiment,
            "tracking_uri": self.parent["tracking_uri"],
            "parent_run_id": self.parent["run_id"],
            "tags": {"mvimpute.trial_id": trial_id, "mlflow.source.name": "mvimpute.tune"},
            "adopt_tag": "mvimpute.trial_id",  # a trial a restored search runs again keeps its run
        }
        return [MlflowRun({**start, "run_name": f"{self.sweep_name}-{trial_id}"}, {"trial_id": trial_id})]


__all__ = ["MlflowRun", "TrialRuns"]
