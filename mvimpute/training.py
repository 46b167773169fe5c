"""The training loop: one loop, run in-process by `MultiViewImputer.fit` or per Ray Train worker.

The loop only calls the model (whose forward is `loss(batch, progress)`), steps the optimiser,
and scores a self-supervised validation set: a share of the *observed* validation entries and
whole views is hidden and the score is how well the model recovers them (no clean data needed).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import scoringrules as sr
import torch
from tqdm.auto import tqdm

from . import masking
from .batch import MultiViewBatch
from .config import VAL_SCORES, TrainConfig, train_config  # noqa: F401  (VAL_SCORES: re-exported)
from .data.multiview import MultiViewData
from .models.base import MODEL_REGISTRY, ImputationModel, config_from_kwargs, row_chunks
from .models.defaults import size_defaults


def parse_device(device: str | torch.device) -> torch.device | None:
    """The torch device `device` names, None for "auto"; a name torch does not know is a
    `ValueError` that names it."""
    if str(device) == "auto":
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a device: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device a `device` setting picks: "auto" is the GPU when CUDA has one, else the CPU; any
    other value names one ("cpu", "cuda", "cuda:1", "mps"). An unknown name, or a GPU this machine
    lacks, is a `ValueError` naming it."""
    dev = parse_device(device)
    if dev is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s); use 'auto' or 'cpu'"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use 'auto' or 'cpu'")
    return dev


@dataclass
class ValidationSet:
    """Validation rows with extra entries hidden; `hidden` marks what the score looks at."""

    corrupted: MultiViewBatch
    truth: MultiViewBatch
    hidden: dict[str, torch.Tensor]

    @classmethod
    def from_batch(cls, batch: MultiViewBatch, hide_frac: float, view_frac: float, seed: int) -> ValidationSet:
        data = MultiViewData(batch.to_arrays())
        steps = masking.corrupt(
            data, mcar_rate=hide_frac, view_rate=view_frac if len(data.views) > 1 else 0.0, seed=seed
        )
        corrupted = MultiViewBatch.from_arrays(steps.data.views, dtype=batch.values[batch.views[0]].dtype)
        hidden = {v: torch.as_tensor(h) for v, h in steps.hidden.items()}
        return cls(corrupted, batch, hidden)

    def to(self, device) -> ValidationSet:
        return ValidationSet(
            self.corrupted.to(device), self.truth.to(device), {v: h.to(device) for v, h in self.hidden.items()}
        )


CALIBRATION_VIEW_RATE = 0.5


def calibration_sets(val: ValidationSet, hide_frac: float, seed: int) -> list[tuple]:
    """The conformal calibration's entries, from the validation samples' observed values: one copy
    with only entries hidden (MCAR, `hide_frac`) and, with several views, one with only whole views
    hidden (each with probability `CALIBRATION_VIEW_RATE`, never all), so that each kind of missing
    entry is calibrated with the other views as observed as at imputation time.
    Each item is (corrupted batch, truth values, hidden masks)."""
    truth = val.truth
    sets = [ValidationSet.from_batch(truth, hide_frac, 0.0, seed + 11)]
    if len(truth.views) > 1:
        data = MultiViewData(truth.to_arrays())
        steps = masking.drop_views(data, CALIBRATION_VIEW_RATE, seed + 13)
        corrupted = MultiViewBatch.from_arrays(steps.data.views, dtype=truth.values[truth.views[0]].dtype)
        sets.append(
            ValidationSet(
                corrupted.to(truth.values[truth.views[0]].device),
                truth,
                {v: torch.as_tensor(h, device=truth.values[v].device) for v, h in steps.hidden.items()},
            )
        )
    return [(s.corrupted, s.truth.values, s.hidden) for s in sets]


@torch.no_grad()
def validation_score(
    model: ImputationModel, val: ValidationSet, n_samples: int = 0, by_kind: bool = False, per_row: bool = False
) -> dict[str, Any]:
    """On the hidden validation entries (scaled space), overall and per view: RMSE of the point
    imputation (`val_rmse`) and, with `n_samples` > 0, the CRPS of that many raw predictive draws
    (`val_crps`, scoringrules' ensemble CRPS, averaged over entries).

    With `by_kind`, also `kinds`: each hidden entry is of one of two kinds, in a view the corrupted
    row lacks entirely (`views`) or beside observed entries of its view (`entries`), and
    `kinds[kind]` holds their `rmse`, `crps` (with draws) and `count`. (Only the final model's score
    asks for it, or for `rows`: the epochs' scores do not pay for either.)

    With `per_row`, also `rows`: per validation row (all views together) the sum of squared errors
    (`sse`), of CRPS (`crps`, with draws) and the number of hidden entries (`count`), and the same
    for the whole-view kind alone (`sse_views`, `crps_views`, `count_views`), as lists — the units
    whose spread gives a score's standard error (`auto.paired_standard_error`)."""
    was_training = model.training
    model.eval()
    n = len(val.corrupted)
    sums: dict[str, list[float]] = {v: [0.0, 0, 0.0] for v in val.hidden}  # squared error, entries, CRPS
    kinds = {k: [0.0, 0, 0.0] for k in ("views", "entries")}  # squared error, entries, CRPS
    if per_row:
        row_sse, row_crps, row_cnt = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
        view_sse, view_crps, view_cnt = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
    for rows in row_chunks(n):  # a chunk of rows at a time: memory flat in the split's size
        corrupted = val.corrupted.select(rows)
        filled = model.impute_mean(corrupted)
        draws = model.impute(corrupted, n_samples) if n_samples else None
        for v, hidden in val.hidden.items():
            h = hidden[rows]
            truth = val.truth.values[v][rows][h]
            err = filled[v][h] - truth
            sums[v][0] += float(err.pow(2).sum())
            sums[v][1] += err.numel()
            crps = None
            if draws is not None and err.numel():
                crps = sr.crps_ensemble(truth.double().cpu().numpy(), draws[v][:, h].double().cpu().numpy(), m_axis=0)
                sums[v][2] += float(np.sum(crps))
            if not (by_kind or per_row) or not err.numel():
                continue
            # each hidden entry's kind: its view wholly missing from the corrupted row, or not
            whole = (corrupted.masks[v] == 0).all(1, keepdim=True).expand_as(h)[h].cpu().numpy()
            sq = err.pow(2).double().cpu().numpy()
            c = np.asarray(crps, dtype=np.float64) if crps is not None else np.zeros_like(sq)
            if by_kind:
                for kind, sel in (("views", whole), ("entries", ~whole)):
                    kinds[kind][0] += float(sq[sel].sum())
                    kinds[kind][1] += int(sel.sum())
                    kinds[kind][2] += float(c[sel].sum())
            if per_row:
                # the hidden entries in row-major order: each entry's row, to sum per row
                row_of = np.nonzero(h.cpu().numpy())[0] + rows.start
                np.add.at(row_sse, row_of, sq)
                np.add.at(row_cnt, row_of, 1)
                np.add.at(row_crps, row_of, c)
                np.add.at(view_sse, row_of[whole], sq[whole])
                np.add.at(view_cnt, row_of[whole], 1)
                np.add.at(view_crps, row_of[whole], c[whole])
    model.train(was_training)
    out, sse, cnt, crps_sum = {}, 0.0, 0, 0.0
    for v, (v_sse, v_cnt, v_crps) in sums.items():
        if v_cnt:
            out[f"val_rmse_{v}"] = math.sqrt(v_sse / v_cnt)
            sse, cnt = sse + v_sse, cnt + v_cnt
            if n_samples:
                out[f"val_crps_{v}"] = v_crps / v_cnt
                crps_sum += v_crps
    out["val_rmse"] = math.sqrt(sse / cnt) if cnt else float("nan")
    if n_samples:
        out["val_crps"] = crps_sum / cnt if cnt else float("nan")
    if by_kind:  # nested: a view may be named "views" or "entries"
        out["kinds"] = {
            kind: {"rmse": math.sqrt(k_sse / k_cnt), "count": k_cnt, **({"crps": k_crps / k_cnt} if n_samples else {})}
            for kind, (k_sse, k_cnt, k_crps) in kinds.items()
            if k_cnt
        }
    if per_row:
        out["rows"] = {"sse": row_sse.tolist(), "count": row_cnt.tolist()}
        out["rows"].update(sse_views=view_sse.tolist(), count_views=view_cnt.tolist())
        if n_samples:
            out["rows"].update(crps=row_crps.tolist(), crps_views=view_crps.tolist())
    return out


def whole_view_share(batch: MultiViewBatch) -> float | None:
    """Of the entries `batch` lacks, the share in views its rows lack entirely (a missing view)
    rather than beside observed entries of their view; None when nothing is missing."""
    whole = partial = 0
    for m in batch.masks.values():
        missing = (m == 0).sum(1)
        gone = missing == m.shape[1]
        whole += int(missing[gone].sum())
        partial += int(missing[~gone].sum())
    return whole / (whole + partial) if whole + partial else None


def mix_of_kinds(scores: Mapping[str, float], metric: str, weight: float | None) -> float:
    """`metric` (`crps` or `rmse`) over the validation's hidden entries with the two kinds weighted
    as the data's own missing entries are (`weight`: the whole-view share), or as hidden where the
    data misses nothing or the split hid one kind only."""
    kinds = scores.get("kinds") or {}
    views, entries = (kinds.get(k, {}).get(metric) for k in ("views", "entries"))
    if weight is None or views is None or entries is None:
        return scores[f"val_{metric}"]
    if metric == "rmse":
        return math.sqrt(weight * views**2 + (1 - weight) * entries**2)
    return weight * views + (1 - weight) * entries


def pool_folds(scores: Sequence[Mapping], metric: str, view_weight: float | None) -> dict:
    """One score of K folds' `final_validation_score`s (`model="auto"` with `cv_folds`), as if their
    hidden entries were one split: `val_crps` and `val_rmse` over all hidden entries, `kinds` (whole
    views, single entries) summed by kind, `val_score` their mix with `view_weight` (`mix_of_kinds`;
    the share of the data's missing entries in whole missing views: every row is a validation row
    once), and `rows` (per-row sums, for the standard errors) concatenated fold after fold where every
    fold has them."""
    sums: dict[str, list[float]] = {}  # kind -> [squared error, entries, CRPS]
    for s in scores:
        for kind, k in (s.get("kinds") or {}).items():
            acc = sums.setdefault(kind, [0.0, 0, 0.0])
            acc[0] += k["rmse"] ** 2 * k["count"]
            acc[1] += k["count"]
            acc[2] += k.get("crps", math.nan) * k["count"]
    sse, count, crps = (sum(a[i] for a in sums.values()) for i in range(3))
    out: dict = {
        "val_rmse": math.sqrt(sse / count) if count else math.nan,
        "val_crps": crps / count if count else math.nan,
        "kinds": {k: {"rmse": math.sqrt(a[0] / a[1]), "count": a[1], "crps": a[2] / a[1]} for k, a in sums.items()},
        "view_weight": view_weight,
    }
    out["val_score"] = mix_of_kinds(out, metric, view_weight)
    if scores and all(s.get("rows") for s in scores):
        keys = set.intersection(*(set(s["rows"]) for s in scores))
        out["rows"] = {k: [x for s in scores for x in s["rows"][k]] for k in keys}
    return out


# per-row validation scores are kept (for `auto`'s standard errors) up to this many validation rows;
# beyond, the standard error of a score is far below any difference that decides a pick
ROW_SCORES_MAX = 20_000
# draws per hidden entry for the final model's CRPS, which ranks models of different kinds (`auto`).
# The ensemble CRPS of m draws exceeds the distribution's by E|X − X'| / (2m): at the 20 draws that
# select epochs (a bias shared by a model's epochs) it penalises wide predictive distributions by
# 2.5 % of their spread, and a model whose m draws are its whole distribution (KNN's stratified draws
# of its k neighbours) not at all — on a planted noisy manifold it ranked KNN above the JPVAE that
# wins on held-out rows by 5 % (docs/auto.md). At 100 draws the bias is 0.5 % of the spread.
RANK_SAMPLES = 100


def final_validation_score(model: ImputationModel, val: ValidationSet | None, config: TrainConfig) -> dict[str, Any]:
    """`validation_score` of a fitted model as it will be used (after `after_fit`), with the draws
    of `config.val_score`: `val_rmse`, `val_crps` (with draws), per view, and `val_score` (the one
    `config.val_score` names), plus the per-row sums (`rows`) when the split has at most
    `ROW_SCORES_MAX` rows. The CRPS is of at least `RANK_SAMPLES` draws (`val_samples` if more).

    `val_score` ranks models of different kinds on one validation split (`model="auto"`): the
    split hides entries and whole views in its own proportions, while the data may miss only
    entries, or only views. So its two kinds of hidden entries (`validation_score`'s `kinds`) are weighted as
    the validation rows' own missing entries are (`whole_view_share` of the rows as given, kept as
    `view_weight`): a model that fills in whole views well is not picked for data that misses
    single entries. Empty without a validation set."""
    if val is None:
        return {}
    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    n_samples = max(config.val_samples, RANK_SAMPLES) if config.val_score == "crps" else 0
    out = validation_score(
        model, val.to(device), n_samples, by_kind=True, per_row=len(val.corrupted) <= ROW_SCORES_MAX
    )
    out["view_weight"] = whole_view_share(val.truth)
    out["val_score"] = mix_of_kinds(out, config.val_score, out["view_weight"])
    return out


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0  # numbered from 1; 0: none yet
    best_score: float = math.inf
    stopped_early: bool = False
    stopped_at_time_limit: bool = False  # the epochs ended at the run's time limit (`TrainingLoop.run`)


class TrainingLoop:
    """Adam + gradient clipping + early stopping on the validation score; restores the best weights.

    The score is `config.select_metric`; epochs that end before `selection_start(model)` (a warm-up,
    e.g. TAE's `warmup_end`) are never picked as the best and do not count towards `patience`.

    `model` may be wrapped (DistributedDataParallel): it is called, never its `.loss`.
    `reduce_metrics`, when given, maps each epoch's metrics before they are used (distributed runs
    average the training losses over workers and take rank 0's validation score, so that every
    worker makes the same best-epoch and early-stopping decisions).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        device: torch.device,
        reduce_metrics: Callable[[dict[str, float]], dict[str, float]] | None = None,
    ) -> None:
        self.model, self.config, self.device = model, config, device
        self.reduce_metrics = reduce_metrics
        self.module: ImputationModel = getattr(model, "module", model)
        # a one-pass model (a classic imputer, fitted by `after_fit`) has no parameters and runs no epochs
        self.optimizer = (
            None
            if self.module.one_pass
            else torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        )
        self.result = TrainResult()
        self.best_state: dict | None = None
        self.epoch = 0
        self.bad_epochs = 0
        self.select_after = selection_start(self.module)

    def state_dict(self) -> dict:
        return {
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "epoch": self.epoch,
            "bad_epochs": self.bad_epochs,
            "best_epoch": self.result.best_epoch,
            "best_score": self.result.best_score,
            "history": self.result.history,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.bad_epochs = state["epoch"], state["bad_epochs"]
        self.result = TrainResult(list(state["history"]), state["best_epoch"], state["best_score"])
        self.best_state = state["best_state"]

    def train_epoch(self, batches: Iterable[MultiViewBatch], steps_per_epoch: int) -> dict[str, float]:
        self.model.train()
        sums: dict[str, float] = {}
        n = 0
        epochs = self.config.epochs
        for i, batch in enumerate(batches):
            progress = min(1.0, (self.epoch + i / max(steps_per_epoch, 1)) / epochs)
            out = self.model(batch.to(self.device), progress)
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if self.config.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            for k, v in out.detached().items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        if n == 0:
            raise ValueError("an epoch produced no batches: the training data is empty")
        return {f"train_{k}": v / n for k, v in sums.items()}

    def run(
        self,
        train_batches: Callable[[int], Iterable[MultiViewBatch]],
        steps_per_epoch: int,
        validation: ValidationSet | None = None,
        on_epoch: Callable[[int, dict[str, float], bool], None] | None = None,
        show_progress: bool | None = None,
        time_limit: float | None = None,
    ) -> TrainResult:
        """Train from `self.epoch` to `config.epochs`. `on_epoch(epoch, metrics, is_best)` runs after
        each epoch (checkpoints, metric reporting). Each epoch's metrics include `epoch_seconds`, the
        wall time of its training pass (fetching the batches and the optimiser steps; validation
        scoring and `on_epoch` excluded). With `time_limit` (seconds from now), the epochs stop after
        the one that passes it (`stopped_at_time_limit`); the best epoch so far is kept."""
        cfg = self.config
        deadline = None if time_limit is None else time.perf_counter() + time_limit
        show = cfg.progress if show_progress is None else show_progress
        val = validation.to(self.device) if validation is not None else None
        bar = tqdm(
            range(self.epoch, 0 if self.module.one_pass else cfg.epochs),
            initial=self.epoch,
            total=cfg.epochs,
            disable=not show,
            desc=f"{self.module.name}",
            unit="epoch",
        )
        for epoch in bar:
            self.epoch = epoch
            t0 = time.perf_counter()
            metrics = self.train_epoch(train_batches(epoch), steps_per_epoch)
            metrics["epoch_seconds"] = time.perf_counter() - t0  # the training pass only (batches + steps)
            score = metrics["train_loss"]
            if val is not None:
                n_draws = cfg.val_samples if cfg.val_score == "crps" else 0
                metrics.update(validation_score(self.module, val, n_draws))
                metrics["val_score"] = metrics[f"val_{cfg.val_score}"]
            if self.reduce_metrics is not None:
                metrics = self.reduce_metrics(metrics)
                score = metrics["train_loss"]
            if val is not None:
                if cfg.select_metric not in metrics:
                    raise ValueError(
                        f"select_metric {cfg.select_metric!r} is not a validation score; scores are "
                        f"{sorted(k for k in metrics if k.startswith('val_'))}"
                    )
                score = metrics[cfg.select_metric]
            metrics["epoch"] = epoch + 1  # epochs are numbered from 1 wherever a person sees them
            eligible = (epoch + 1) / cfg.epochs >= self.select_after - 1e-9
            improved = eligible and score < self.result.best_score
            if improved or (eligible and not np.isfinite(self.result.best_score)):
                self.result.best_score, self.result.best_epoch = score, epoch + 1
                self.best_state = copy.deepcopy(self.module.state_dict())
                self.bad_epochs = 0
            elif eligible:
                self.bad_epochs += 1
            self.result.history.append(metrics)
            self.epoch = epoch + 1
            bar.set_postfix(loss=f"{metrics['train_loss']:.3g}", val=f"{score:.4g}", best=self.result.best_epoch)
            if on_epoch is not None:
                on_epoch(epoch, metrics, improved)
            if cfg.patience is not None and val is not None and self.bad_epochs >= cfg.patience:
                self.result.stopped_early = True
                break
            if deadline is not None and time.perf_counter() >= deadline and self.epoch < cfg.epochs:
                self.result.stopped_early = self.result.stopped_at_time_limit = True
                break
        bar.close()
        if self.best_state is not None and val is not None:
            self.module.load_state_dict(self.best_state)
        # the model's `after_fit` fits the conformal calibration once its own post-fit steps are done
        self.module.pending_calibration = (
            (calibration_sets(val, cfg.val_hide_frac, cfg.seed), cfg.calibration_samples)
            if val is not None and cfg.calibrate
            else None
        )
        return self.result


def shuffled_batches(batch: MultiViewBatch, batch_size: int, seed: int) -> Callable[[int], Iterable[MultiViewBatch]]:
    """Per-epoch shuffled mini-batches of an in-memory batch (the in-process runner)."""
    n = len(batch)

    def batches(epoch: int) -> Iterable[MultiViewBatch]:
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            rows = perm[i : i + batch_size]
            if len(rows) < 2 and n >= 2:
                continue  # a single-row batch gives no batch statistics
            yield batch.select(rows)

    return batches


def shuffled_chunk_batches(
    chunks: Iterable[Mapping[str, torch.Tensor]], batch_size: int, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Mini-batches of `batch_size` rows drawn without replacement from a stream of large chunks
    (the Ray Train runner: Ray Data hands over chunks of many rows, shuffled and cut here).

    Written here because Ray Data's `local_shuffle_buffer_size` re-batches from its buffer row by row:
    one pass over 20,000 rows in batches of 64 took 1.8 s against 0.7 s for chunks of 4,096 permuted
    and cut with torch indexing — a second per epoch that a small model's optimiser steps notice.
    Rows left over at the end of a chunk go into the next one, so every batch but the last is full."""
    g = torch.Generator().manual_seed(seed)
    carry: dict[str, torch.Tensor] | None = None
    for chunk in chunks:
        if carry is not None:
            chunk = {k: torch.cat([carry[k], v]) for k, v in chunk.items()}
        n = len(next(iter(chunk.values())))
        perm = torch.randperm(n, generator=g).to(next(iter(chunk.values())).device)
        full = n - n % batch_size
        for i in range(0, full, batch_size):
            rows = perm[i : i + batch_size]
            yield {k: v[rows] for k, v in chunk.items()}
        carry = {k: v[perm[full:]] for k, v in chunk.items()} if full < n else None
    if carry is not None and len(next(iter(carry.values()))) >= 2:  # a single row gives no batch statistics
        yield carry


# ----------------------------------------------------------------------------- one setup for every runner

VAL_SEED_OFFSET = 7  # the validation set's hiding seed is the training seed + this
AFTER_FIT_ROWS = 4096  # rows per batch of the pass over the training data after training (`after_fit`)


def selection_start(model) -> float:
    """The share of training before which no epoch is selected: the end of the model's warm-up
    (`warmup_end` in its config, TAE's γ ramp), else 0. `model`: a model or a model config."""
    config = getattr(model, "config", model)
    return float(getattr(config, "warmup_end", 0.0) or 0.0)


def holdout_rows(ids, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of every runner: the stable hash of each id (as a string) picks
    the validation rows (`data.ray_data.is_validation`, as Ray Data's streamed split does), and the
    validation rows come in the order of their ids as strings (the order the Ray Train runner sorts
    them into), so that both runners hide the same entries."""
    from .data.ray_data import is_validation

    keys = np.asarray([str(i) for i in ids], dtype=object)
    val = is_validation(keys, val_frac, seed)
    train_rows, val_rows = np.flatnonzero(~val), np.flatnonzero(val)
    return train_rows, val_rows[np.argsort(keys[val_rows].astype(str), kind="stable")]


def make_validation_set(batch: MultiViewBatch, config: TrainConfig) -> ValidationSet:
    """The self-supervised validation set of `batch` (rows in the order `holdout_rows` gives them)."""
    return ValidationSet.from_batch(batch, config.val_hide_frac, config.val_view_frac, config.seed + VAL_SEED_OFFSET)


def steps_per_epoch(n_train: int, batch_size: int, num_workers: int = 1) -> int:
    """Optimiser steps per epoch: the training rows in batches of `batch_size` on each of `num_workers`."""
    return max(1, -(-int(n_train) // (num_workers * batch_size)))


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's shuffle (both runners)."""
    return seed * 100_003 + epoch


def settings_for(
    model: str,
    model_params: Mapping | None,
    train: TrainConfig | Mapping | None,
    n_samples: int | None = None,
    given: frozenset[str] | set[str] | None = None,
) -> tuple[Any, TrainConfig]:
    """(model config, `TrainConfig`) for `model` on a data set of `n_samples` (before any split):
    the data-size defaults for keys not in `given` (default: the keys of `model_params` and of a
    mapping `train`), then the model config built — the one place it is. Unknown models or keys
    are `ValueError`s naming them."""
    if model not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODEL_REGISTRY)}")
    model_params = dict(model_params or {})
    if given is None:
        given = set(model_params) | (set(train) if isinstance(train, Mapping) else set())
    cfg = train_config({"progress": False, **train} if isinstance(train, Mapping) else train)
    if n_samples is not None:
        extra_model, extra_train = size_defaults(model, n_samples, frozenset(given))
        known = {f.name for f in fields(MODEL_REGISTRY[model].config_class)}  # a classic model has no widths
        model_params = {**model_params, **{k: v for k, v in extra_model.items() if k in known}}
        cfg = replace(cfg, **extra_train)
    return config_from_kwargs(MODEL_REGISTRY[model].config_class, model_params, model), cfg
