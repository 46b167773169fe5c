"""Hooks into a run, the way a job layer plugs tracking in without the engine knowing of it.

`on_start` and `on_end` run where the run is driven (the driver, or a Tune trial's process);
`on_epoch` and `on_checkpoint` run on rank 0 of the workers, so a callback travels to them
(it must pickle). `run_with_callbacks` is the one place a run's end status is decided.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


class RunCallback:
    """Does nothing; subclasses override what they need."""

    def on_start(self, name: str, request: Any) -> None:
        """Before any worker starts: the run's name and its `RunRequest`."""

    def on_epoch(self, epoch: int, metrics: Mapping[str, float], improved: bool) -> None:
        """After each epoch, on rank 0 (`epoch` numbered from 0, `metrics["epoch"]` from 1)."""

    def on_checkpoint(self, epoch: int, final: bool) -> None:
        """After rank 0 reported a checkpoint of `epoch` (numbered from 1) to Ray."""

    def on_end(self, result: Any, status: str) -> None:
        """After the run: its result (None unless FINISHED) and FINISHED, FAILED or KILLED."""


def run_with_callbacks(callbacks: Sequence[RunCallback], name: str, request: Any, run: Callable[[], Any]) -> Any:
    """`run()` between the callbacks' `on_start` and `on_end`: FINISHED with its result, KILLED on
    Ctrl-C, FAILED on any other error (which is raised again)."""
    for cb in callbacks:
        cb.on_start(name, request)
    status, result = FAILED, None
    try:
        result = run()
        status = FINISHED
        return result
    except KeyboardInterrupt:
        status = KILLED
        raise
    finally:
        for cb in callbacks:
            cb.on_end(result, status)


def epoch_line(metrics: Mapping, epochs: int, improved: bool) -> str:
    """`epoch 3/30 train_loss=41.2 val_rmse=0.27 (1.0 s) *` — epochs numbered from 1, `*` marks the best so far."""
    shown = " ".join(f"{k}={metrics[k]:.4g}" for k in ("train_loss", "val_rmse", "val_crps") if k in metrics)
    secs = metrics.get("epoch_seconds", float("nan"))
    return f"epoch {int(metrics['epoch'])}/{epochs} {shown} ({secs:.1f} s){' *' if improved else ''}"


class EpochLines(RunCallback):
    """Prints rank 0's epoch lines on the driver: a Ray queue the worker puts them on, a driver thread
    that prints them.

    Written here because Ray Train V2 has no driver-side hook per report (its `UserCallback`s run in
    the controller actor, whose output reaches the driver only with every worker's log lines)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.queue = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict:  # what travels to the workers: the queue's handle
        return {"epochs": self.epochs, "queue": self.queue, "_stop": None, "_thread": None}

    def on_start(self, name: str, request: Any) -> None:
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # on the driver's node: the lines die with the driver, never with a worker's node
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def on_epoch(self, epoch: int, metrics: Mapping[str, float], improved: bool) -> None:
        if self.queue is None:
            return
        import ray

        try:
            self.queue.put_nowait(epoch_line(metrics, self.epochs, improved))
        except ray.exceptions.RayError:  # progress lines are not worth a training run
            self.queue = None

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

    def on_end(self, result: Any, status: str) -> None:
        if self.queue is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        if status == FINISHED:
            self._drain(timeout=None)
        self.queue.shutdown()
        self.queue = None


__all__ = ["FAILED", "FINISHED", "KILLED", "EpochLines", "RunCallback", "epoch_line", "run_with_callbacks"]
