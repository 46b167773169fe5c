"""One worker's training run: the in-process `TrainingLoop`, fed from the worker's Ray Data shard,
reporting each epoch and a self-describing checkpoint every `checkpoint_every` epochs to Ray.

The same loop runs under Ray Train (`RayTrainEnv`, DDP over the workers) and inside a Tune trial's
own process (`TuneTrialEnv`). It gets the run's `RunRequest` unchanged and a `WorkerPlan` of what
preparation found; tracking reaches it only as callbacks.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..batch import MultiViewBatch
from ..checkpoint import CHECKPOINT_FILE, checkpoint_dict, read_checkpoint, view_infos
from ..data.multiview import ViewSchema
from ..data.ray_data import batch_from_tensors
from ..monitoring import training_reference
from ..training import (
    AFTER_FIT_ROWS,
    TrainingLoop,
    epoch_seed,
    final_validation_score,
    shuffled_chunk_batches,
    steps_per_epoch,
)
from .callbacks import RunCallback
from .prepare import validation_set_from_batches
from .request import RunRequest

REFERENCE_ROWS = 20_000  # training rows the monitoring reference's deciles and shares come from

FAULT_ENV = "MVIMPUTE_FAULT_INJECT"  # "epoch:rank:marker-file" — a test hook: that worker fails once, after that epoch
SHUFFLE_CHUNK_ROWS = 4096  # rows a worker takes from Ray Data at once and shuffles into mini-batches


@dataclass(frozen=True)
class WorkerPlan:
    """What preparation found, for the workers: the schema, the split's sizes, where the data came from."""

    run_name: str
    schema: dict  # ViewSchema.state()
    n_train: int
    has_validation: bool
    imputer: dict  # per-view likelihoods and scalings, kept in the checkpoint
    source: dict
    report_placement_group: bool = False
    fault: Mapping | None = None


def fault_from_env() -> dict | None:
    raw = os.environ.get(FAULT_ENV)
    if not raw:
        return None
    try:
        epoch, rank, marker = raw.split(":", 2)
        return {"epoch": int(epoch), "rank": int(rank), "marker": marker}
    except ValueError:
        raise ValueError(f"{FAULT_ENV} must read 'epoch:rank:marker-file', got {raw!r}") from None


def newest_checkpoint(storage_path: str, run_name: str | None) -> dict | None:
    """The newest readable checkpoint in a run's folder (`<storage>/<run name>/checkpoint_*`), or None.

    Ray Train restores a run run again under its name from the checkpoints its controller has
    registered; one a worker persisted just before Ctrl-C or a lost driver may not be registered
    yet, and the run would start over. Read here through pyarrow's filesystems (local or a URI)."""
    found = newest_checkpoint_at(storage_path, run_name)
    return None if found is None else found[1]


def newest_checkpoint_at(storage_path: str, run_name: str | None) -> tuple[str, dict] | None:
    """(its folder, as a URI where `storage_path` is one; its state) of `newest_checkpoint`, or None."""
    if not run_name:
        return None
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(storage_path)
    found = fs.get_file_info(pafs.FileSelector(f"{root.rstrip('/')}/{run_name}", allow_not_found=True))
    dirs = sorted(i.path for i in found if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    for d in reversed(dirs):  # names carry their time: the newest last
        with tempfile.TemporaryDirectory() as tmp:
            try:
                pafs.copy_files(f"{d}/{CHECKPOINT_FILE}", f"{tmp}/{CHECKPOINT_FILE}", source_filesystem=fs)
                state = read_checkpoint(tmp, "cpu")
            except (OSError, ValueError):  # not written whole: an older one
                continue
            scheme = storage_path.split("://", 1)[0] if "://" in storage_path else None
            return (f"{scheme}://{d.lstrip('/')}" if scheme and scheme != "file" else d), state
    return None


def _worker_nodes(world: int) -> list[str]:
    """The Ray node of each worker, by rank (every worker takes part: it is a collective)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    if world <= 1:
        return [here]
    import torch.distributed as dist

    nodes: list = [None] * world
    dist.all_gather_object(nodes, here)
    return nodes


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


class RayTrainEnv:
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


class TuneTrialEnv:
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


MMAP_THRESHOLD = 1 << 20  # bytes: larger allocations get pages of their own, returned to the system when freed


def limit_heap_fragmentation(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes in this (worker) process; True where it took.

    glibc raises the threshold each time a large block is freed (up to 32 MiB), after which the
    scoring and calibration passes' transient tensors (hundreds of MiB per chunk of rows) come from
    the heap, and the freed space fragments it: a worker's memory then grew with the number of
    chunks, i.e. with the validation rows (measured: docs/benchmarks.md, "Training memory").
    A fixed threshold keeps every block over 1 MiB in pages of its own; a training step's tensors
    stay below it. Hand-written through ctypes: glibc's `mallopt` has no Python binding, and its
    `MALLOC_MMAP_THRESHOLD_` variable works only when set before the process starts."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return False


def ray_train_worker(config: dict) -> None:
    """Per-worker training function (Ray Train): `config` holds the request, the plan and the callbacks."""
    limit_heap_fragmentation()
    env = RayTrainEnv(config["request"].resources.use_gpu)
    WorkerRun(config["request"], config["plan"], config["callbacks"], env).run()


class WorkerRun:
    """One worker's run: restore, train with `TrainingLoop`, report, checkpoint, and `after_fit`."""

    def __init__(self, request: RunRequest, plan: WorkerPlan, callbacks: Sequence[RunCallback], env) -> None:
        self.request, self.plan, self.env = request, plan, env
        self.callbacks = list(callbacks) if env.rank == 0 else []
        self.cfg = request.train
        torch.manual_seed(self.cfg.seed)
        self.schema = ViewSchema.from_state(plan.schema)
        self.views = self.schema.view_names
        state = self._restored_state()
        model = request.build_model(view_infos(self.schema))
        if state is not None:
            model.load_state_dict(state["state_dict"])
        device = env.device
        self.loop = TrainingLoop(env.prepare_model(model), self.cfg, device, _metric_reducer(env.world, device))
        if state is not None and state.get("loop") is not None:
            self.loop.load_state_dict(state["loop"])
        self.attempts = [*(state or {}).get("attempts", []), self.loop.epoch]
        self.placement = self._placement() if plan.report_placement_group else {}
        self.nodes = _worker_nodes(env.world)

    def _restored_state(self) -> dict | None:
        """This run's last checkpoint (a restart, or a stopped run run again under its name), else the
        request's `resume_from`, else none. Of the checkpoint Ray Train registered and the newest one in
        the run's folder, the later epoch: a worker may have persisted one more just before Ctrl-C or a
        lost driver, which Ray never registered."""
        found = []
        ckpt = self.env.checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                found.append(read_checkpoint(d, "cpu"))
        state = newest_checkpoint(self.request.storage.path, self.request.storage.run_name)
        if state is not None:
            found.append(state)
        if found:
            return max(found, key=lambda s: (s.get("loop") or {}).get("epoch", 0))
        if self.request.storage.resume_from:
            return read_checkpoint(self.request.storage.resume_from, "cpu", what="resume_from")
        return None

    @staticmethod
    def _placement() -> dict:
        from ray.util import get_current_placement_group

        pg = get_current_placement_group()
        return {"train_placement_group": pg.id.hex()} if pg is not None else {}

    def _validation_set(self):
        if not self.plan.has_validation:
            return None
        shard = self.env.dataset("val")
        return validation_set_from_batches(
            shard.iter_batches(batch_size=4096, batch_format="numpy"), self.views, self.cfg
        )

    def _batches(self, epoch: int) -> Iterable[MultiViewBatch]:
        chunks = self.shard.iter_torch_batches(
            batch_size=max(SHUFFLE_CHUNK_ROWS, 16 * self.cfg.batch_size), device=self.env.device
        )
        for b in shuffled_chunk_batches(chunks, self.cfg.batch_size, epoch_seed(self.cfg.seed, epoch)):
            yield batch_from_tensors(b, self.views)

    def _extra(self, final: bool) -> dict:
        """What a checkpoint holds beyond the weights: the loop's state, history, attempts and provenance."""
        return {
            "loop": self.loop.state_dict(),
            "history": self.loop.result.history,
            "attempts": self.attempts,
            "distributed": {
                "num_workers": self.env.world,
                "nodes": self.nodes,
                "final": final,
                "run_name": self.plan.run_name,
                "n_train": self.plan.n_train,
            },
            "imputer": self.plan.imputer,
            "data": self.plan.source,
            "validation": getattr(self, "final_scores", None),  # the final model's validation scores
            "summary": getattr(self, "summary", None) if final else None,  # the final report's metrics
            "monitoring": getattr(self, "monitoring_reference", None) if final else None,  # serving's reference
        }

    def _report(self, metrics: dict, epoch: int, save: bool, final: bool = False) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            written = None
            if self.env.rank == 0 and save:
                state = checkpoint_dict(self.loop.module, self.schema, self.cfg, self._extra(final))
                torch.save(state, os.path.join(tmp, CHECKPOINT_FILE))
                written = tmp
            self.env.report({**_clean(metrics), **self.placement}, written)
        if written:
            for cb in self.callbacks:
                cb.on_checkpoint(epoch, final)

    def _selection(self, metrics: dict) -> dict:
        """The run's score so far for a scheduler or a search: the best selectable epoch's score
        (after a warm-up), else this epoch's."""
        best = self.loop.result.best_score
        key = self.cfg.select_metric if self.plan.has_validation else "train_loss"
        now = metrics.get(key, float("nan"))
        return {"score": float(best if np.isfinite(best) else now), "best_epoch": self.loop.result.best_epoch}

    def _on_epoch(self, epoch: int, metrics: dict, improved: bool) -> None:
        for cb in self.callbacks:  # before the report, which may be the last thing a trial a scheduler stops does
            cb.on_epoch(epoch, metrics, improved)
        every = self.request.storage.checkpoint_every
        save = (epoch + 1) % every == 0 or epoch + 1 == self.cfg.epochs
        self._report({**metrics, **self._selection(metrics)}, epoch + 1, save)
        self._maybe_fail(epoch)

    def _maybe_fail(self, epoch: int) -> None:
        fault = self.plan.fault
        if fault and self.env.rank == fault["rank"] and epoch + 1 == fault["epoch"]:
            if not os.path.exists(fault["marker"]):
                Path(fault["marker"]).write_text(f"failed after epoch {epoch}\n")
                raise RuntimeError(f"injected failure on worker {self.env.rank} after epoch {epoch} ({FAULT_ENV})")

    def _after_fit(self) -> None:
        """Rank 0's pass over the training data once training ends (e.g. JPVAE's latent Gaussian, calibration)."""
        module = self.loop.module
        module.eval()
        if self.env.rank != 0:
            return
        full, device = self.env.dataset("fit"), self.env.device
        module.after_fit(
            lambda: (
                batch_from_tensors(b, self.views)
                for b in full.iter_torch_batches(batch_size=AFTER_FIT_ROWS, device=device)
            )
        )

    def _monitoring_reference(self, val_set) -> dict:
        """What serving's monitoring compares with (`monitoring.training_reference`), from the first
        `REFERENCE_ROWS` training rows (scaled, as the model sees them) and the validation split."""
        parts, rows = [], 0
        for b in self.env.dataset("fit").iter_torch_batches(batch_size=AFTER_FIT_ROWS, device="cpu"):
            batch = batch_from_tensors(b, self.views)
            parts.append({v: np.where(batch.masks[v].numpy() > 0, batch.values[v].double().numpy(), np.nan)
                          for v in self.views})  # fmt: skip
            rows += len(batch)
            if rows >= REFERENCE_ROWS:
                break
        scaled = {v: np.concatenate([p[v] for p in parts])[:REFERENCE_ROWS] for v in self.views}
        cfg = self.cfg
        return training_reference(
            self.loop.module, self.schema, None, val_set if cfg.calibrate else None, cfg.calibration_samples,
            cfg.seed, scaled=scaled,
        )  # fmt: skip

    def run(self) -> None:
        val_set = self._validation_set()
        self.shard = self.env.dataset("train")
        # from the group's size now: an elastic run may go on with fewer workers after losing a node
        steps = steps_per_epoch(self.plan.n_train, self.cfg.batch_size, self.env.world)
        self.loop.run(self._batches, steps, val_set, self._on_epoch, show_progress=False)
        self._after_fit()
        best = self.loop.result
        # the fitted model's validation score (after `after_fit`): what ranks models of different kinds
        # (`model="auto"`); a one-pass model runs no epochs, so it is its only score
        self.final_scores = final_validation_score(self.loop.module, val_set, self.cfg) if self.env.rank == 0 else {}
        if self.env.rank == 0:
            self.monitoring_reference = self._monitoring_reference(val_set)
        final = self.final_scores.get("val_score", float("nan"))
        score = final if self.loop.module.one_pass and val_set is not None else best.best_score
        self.summary = summary = {
            "epoch": self.loop.epoch,
            "final": 1.0,
            "best_epoch": best.best_epoch,
            "best_score": best.best_score,
            "score": score,
            "final_score": final,
        }
        self._report(summary, self.loop.epoch, save=True, final=True)


__all__ = ["FAULT_ENV", "RayTrainEnv", "TuneTrialEnv", "WorkerPlan", "WorkerRun", "fault_from_env", "ray_train_worker"]
