"""`MultiViewImputer`: the public, scikit-learn-like entry point (in-process, no Ray needed)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .auto import AUTO, AutoSettings, fold_rows, pick_winner, without_row_scores
from .batch import MultiViewBatch
from .checkpoint import load_checkpoint, save_checkpoint, view_infos
from .data.multiview import MultiViewData, ViewSchema, as_multiview, check_magnitude
from .files import atomic_write
from .models import MODEL_REGISTRY
from .models.base import config_from_kwargs, module_device
from .monitoring import training_reference
from .training import (
    AFTER_FIT_ROWS,
    TrainConfig,
    TrainingLoop,
    calibration_sets,
    final_validation_score,
    holdout_rows,
    make_validation_set,
    parse_device,
    pool_folds,
    resolve_device,
    settings_for,
    shuffled_batches,
    steps_per_epoch,
    whole_view_share,
)

TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
CHUNK = 4096


class MultiViewImputer:
    """Fill missing entries and whole missing views with a generative multi-view model.

    `model` is one of the registry's names ("tae", "jpvae", "mvae", "miwae", "mean", "knn", "mice"),
    or "auto" (parameters `candidates`, `budget`, `tie_tolerance`, `tie_se`; see `auto.py`); keyword arguments
    are split between the training loop (`epochs`, `batch_size`, `lr`, `patience`, `val_frac`,
    `seed`, `device`, `progress`, ...) and the model's own config (e.g. `prior`, `alpha`,
    `latent_dim` for JPVAE; `C`, `lam` for TAE). An unknown name is a `ValueError`.
    `likelihoods` / `scalings` override the per-view choices inferred from the data.

    Defaults that depend on the data size (widths, latent size, weight decay, batch size,
    patience, validation share) follow `models.defaults.size_defaults` for fewer than
    `SMALL_N` training samples; a parameter given here always wins. `calibrate=False` turns off
    the split-conformal calibration of the draws (on by default; see `predict_interval`).
    """

    def __init__(
        self,
        model: str = "jpvae",
        *,
        likelihoods: Mapping[str, str] | None = None,
        scalings: Mapping[str, str] | None = None,
        **params,
    ) -> None:
        if model not in MODEL_REGISTRY and model != AUTO:
            raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODEL_REGISTRY)} or {AUTO!r}")
        self.model_name = model
        self.likelihoods = dict(likelihoods or {})
        self.scalings = dict(scalings or {})
        self.given_params_ = set(params)
        self.train_config = TrainConfig(**{k: v for k, v in params.items() if k in TRAIN_KEYS})
        parse_device(self.train_config.device)  # an unknown name fails here; a missing GPU when fitting
        self.model_params = {k: v for k, v in params.items() if k not in TRAIN_KEYS}
        self.auto_: AutoSettings | None = None  # model="auto": the candidates, budget and tie tolerance
        self.selection_: dict | None = None  # model="auto": the candidates' table once fitted (kept in the checkpoint)
        self.monitoring_reference_: dict | None = None  # what serving's monitoring compares with (monitoring.py)
        if model == AUTO:
            self.auto_ = AutoSettings.from_params(self.model_params)
            self.auto_train_params_ = {k: v for k, v in params.items() if k in TRAIN_KEYS}
        else:
            config_from_kwargs(MODEL_REGISTRY[model].config_class, self.model_params, model)  # validate now
        self.model_ = None
        self.schema_: ViewSchema | None = None
        self.history_: list[dict] = []
        self.fit_seconds_: float | None = None
        self.provenance_: dict = {}  # where the training data came from (data, split), kept in the checkpoint

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.model_params.items())
        extra = f", {params}" if params else ""
        return f"MultiViewImputer(model={self.model_name!r}{extra}, epochs={self.train_config.epochs})"

    # -- training
    def fit(
        self,
        views,
        validation=None,
        on_epoch=None,
        *,
        time_limit: float | None = None,
        on_candidate=None,
        resume_file: str | Path | None = None,
        resume_every: int = 1,
    ) -> MultiViewImputer:
        """Train on `views` (dict of arrays/DataFrames with NaN for missing, or `MultiViewData`).

        A share `val_frac` of the samples is held out for the self-supervised validation score that
        drives early stopping, unless `validation` data are given. `on_epoch(epoch, metrics,
        improved)` runs after each epoch (epochs numbered from 0 there, from 1 in `metrics`).
        With `time_limit` (seconds), the epochs stop after the one that passes it, the best kept.
        A column with no observed value, or values whose scaling would overflow, is a `ValueError`.

        `model="auto"`: every candidate fitted in turn and ranked on the validation score; the
        winner becomes this imputer's model (`model_name`), the table is `selection_` (see `auto.py`);
        `on_candidate(name, row)` runs after each candidate.

        With `resume_file`, the run's state (weights, optimiser, epoch, history, best weights, random
        state) is written there, whole or not at all, every `resume_every` epochs; a `fit` that finds
        the file picks the run up after the last epoch it holds, so a long fit stopped at any point
        loses at most `resume_every` epochs and ends with the same weights as an unbroken one (same
        device and threads). A file from another model or settings is a `ValueError`.
        """
        if self.auto_ is not None:
            if resume_file is not None:
                raise ValueError("resume_file applies to one model's fit, not to model='auto'")
            _fit_auto(self, views, validation, on_epoch, on_candidate)
            return self
        data = as_multiview(views, self.likelihoods or None)
        data.check_no_empty_rows()
        for v, a in data.views.items():  # before the split: a huge value in the validation rows overflows too
            check_magnitude(v, a, data.columns[v])
        # the one setup of both runners (the Ray Train runner applies the same data-size defaults)
        model_config, cfg = settings_for(
            self.model_name, self.model_params, self.train_config, data.n_samples, self.given_params_
        )
        self.train_config, self.model_params = cfg, asdict(model_config)
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device)
        if validation is None and cfg.val_frac > 0 and data.n_samples >= 20:
            # the same rows, in the same order, as the Ray Train runner holds out (a hash of the id)
            train_rows, val_rows = holdout_rows(data.index, cfg.val_frac, cfg.seed)
            train, val = data.subset(train_rows), (data.subset(val_rows) if len(val_rows) >= 2 else None)
        else:
            train, val = data, (as_multiview(validation) if validation is not None else None)
        self.validation_index_ = None if val is None else np.asarray(val.index)
        self.schema_ = ViewSchema.fit(train, self.scalings)
        self.model_ = MODEL_REGISTRY[self.model_name](view_infos(self.schema_), model_config).to(device)
        train_batch = self.schema_.to_batch(train)
        val_set = None
        if val is not None:
            val_batch = self.schema_.to_batch(self.schema_.check(val))
            val_set = make_validation_set(val_batch, cfg)
        loop = TrainingLoop(self.model_, cfg, device)
        steps = steps_per_epoch(len(train_batch), cfg.batch_size)
        if resume_file is not None:
            on_epoch = _resumable(Path(resume_file), resume_every, self, loop, len(train_batch), on_epoch)
        t0 = time.perf_counter()
        result = loop.run(
            shuffled_batches(train_batch, cfg.batch_size, cfg.seed), steps, val_set, on_epoch=on_epoch,
            time_limit=time_limit,
        )  # fmt: skip
        self.validation_set_ = val_set  # what `final_validation_score` scores (not saved)
        self.stopped_at_time_limit_ = result.stopped_at_time_limit
        self.model_.eval()
        self.model_.after_fit(lambda: (b.to(device) for b in shuffled_batches(train_batch, AFTER_FIT_ROWS, 0)(0)))
        self.fit_seconds_ = time.perf_counter() - t0
        self.monitoring_reference_ = training_reference(
            self.model_, self.schema_, train, val_set if cfg.calibrate else None, cfg.calibration_samples, cfg.seed
        )
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        return self

    def _check_fitted(self) -> None:
        if self.model_ is None or self.schema_ is None:
            raise RuntimeError("this MultiViewImputer is not fitted yet: call fit() or load()")

    def _prepare(self, views) -> tuple[MultiViewData, MultiViewBatch]:
        self._check_fitted()
        data = self.schema_.check(views)
        if data.n_samples == 0:
            raise ValueError("no rows to impute: the input has 0 samples")
        return data, self.schema_.to_batch(data)

    def _device(self) -> torch.device:
        return module_device(self.model_)

    # -- imputation
    @torch.no_grad()
    def transform(self, views):
        """Missing entries filled by the posterior mean; observed values returned untouched."""
        data, batch = self._prepare(views)
        if self.model_.training:  # eval() walks every submodule: a served model's hot path skips it
            self.model_.eval()
        parts = [
            {
                v: t.cpu().numpy()
                for v, t in self.model_.impute_mean(batch.select(slice(i, i + CHUNK)).to(self._device())).items()
            }
            for i in range(0, len(batch), CHUNK)
        ]
        scaled = {v: np.concatenate([p[v] for p in parts]) for v in self.schema_.view_names}
        filled = self.schema_.inverse(scaled)
        out = {v: np.where(np.isnan(data.views[v]), filled[v], data.views[v]) for v in self.schema_.view_names}
        return _like_input(views, data, out)

    @torch.no_grad()
    def sample(self, views, n_samples: int = 100, calibrated: bool = True) -> dict[str, np.ndarray]:
        """Multiple imputation: dict view → (n_samples, n, d_v) predictive draws (a bit, a censored
        value, a count, a real — from the observation model, not its mean); observed entries keep
        their values. With `calibrated` (default) and a fitted calibration, the draws are stretched
        about their median so that their central 90 % interval is the split-conformal one."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be ≥ 1, got {n_samples}")
        data, batch = self._prepare(views)
        self.model_.eval()
        chunk = max(1, CHUNK * 8 // n_samples)
        parts = [
            {
                v: t.cpu().numpy()
                for v, t in self.model_.sample_draws(
                    batch.select(slice(i, i + chunk)).to(self._device()), n_samples, calibrated
                ).items()
            }
            for i in range(0, len(batch), chunk)
        ]
        out = {}
        for v in self.schema_.view_names:
            draws = np.concatenate([p[v] for p in parts], axis=1)
            draws = self.schema_.scalers[v].inverse(draws.astype(np.float64))
            out[v] = np.where(np.isnan(data.views[v])[None], draws, data.views[v][None])
        return out

    @torch.no_grad()
    def predict_interval(
        self, views, level: float = 0.9, n_samples: int = 100, calibrated: bool = True
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Central `level` prediction intervals: (lo, hi), each a dict view → (n, d_v) array on the
        data's scale; observed entries have lo = hi = the observed value.

        From `n_samples` raw predictive draws; with `calibrated` (default) and a calibration fitted
        at training (`calibrate=True`, the default), the interval is the split-conformal one:
        for a test entry exchangeable with the hidden validation entries of its view (same
        population, missingness of the same kind as the validation split's: entries and whole
        views hidden at random), it covers the truth with probability ≥ `level`, marginally over
        entries of the view, when `n_samples` equals the calibration's (100 by default). `level`
        lies in [0.01, 0.99]; levels between 1 % steps use the next step up. `binary` views are
        not calibrated. See docs/calibration.md.
        """
        if n_samples < 2:
            raise ValueError(f"n_samples must be ≥ 2, got {n_samples}")
        data, batch = self._prepare(views)
        self.model_.eval()
        chunk = max(1, CHUNK * 8 // n_samples)
        lo_parts, hi_parts = [], []
        for i in range(0, len(batch), chunk):
            sub = batch.select(slice(i, i + chunk)).to(self._device())
            res = self.model_.intervals(sub, level, n_samples, calibrated)
            lo_parts.append({v: t[0].cpu().numpy() for v, t in res.items()})
            hi_parts.append({v: t[1].cpu().numpy() for v, t in res.items()})
        lo, hi = {}, {}
        for v in self.schema_.view_names:
            sc = self.schema_.scalers[v]
            a = sc.inverse(np.concatenate([p[v] for p in lo_parts]).astype(np.float64))
            b = sc.inverse(np.concatenate([p[v] for p in hi_parts]).astype(np.float64))
            obs = ~np.isnan(data.views[v])
            lo[v], hi[v] = np.where(obs, data.views[v], a), np.where(obs, data.views[v], b)
        return lo, hi

    def fit_transform(self, views):
        return self.fit(views).transform(views)

    # -- persistence
    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        return save_checkpoint(
            path,
            self.model_,
            self.schema_,
            self.train_config,
            {
                "history": self.history_,
                "imputer": {"scalings": self.scalings, "likelihoods": self.likelihoods},
                "provenance": self.provenance_,
                "best_epoch": getattr(self, "best_epoch_", None),
                "selection": self.selection_,
                "monitoring": self.monitoring_reference_,
            },
        )

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> MultiViewImputer:
        model, schema, state = load_checkpoint(path, map_location=resolve_device(device))
        train_cfg = state.get("train_config") or {}
        imp = cls(
            state["model"], **{**state["model_config"], **{k: v for k, v in train_cfg.items() if k in TRAIN_KEYS}}
        )
        imp.model_, imp.schema_ = model.to(resolve_device(device)), schema
        imp.history_ = state.get("history", [])
        imp.provenance_ = dict(state.get("provenance") or {})
        imp.best_epoch_ = state.get("best_epoch", (state.get("loop") or {}).get("best_epoch"))
        imp.selection_ = state.get("selection")
        imp.monitoring_reference_ = state.get("monitoring")  # None in checkpoints written before it existed
        return imp


def _resume_key(imp: MultiViewImputer, n_train: int) -> str:
    """What a resume file must match: the model, its settings (progress aside) and the training rows' count."""
    train = {k: v for k, v in asdict(imp.train_config).items() if k != "progress"}
    return json.dumps(
        {"model": imp.model_name, "params": imp.model_params, "train": train, "n_train": n_train},
        sort_keys=True,
        default=str,
    )


def _resumable(path: Path, every: int, imp: MultiViewImputer, loop: TrainingLoop, n_train: int, on_epoch):
    """Restore `loop` and `imp.model_` from `path` when it exists; return an `on_epoch` that writes
    the state there every `every` epochs (and after the last) before calling `on_epoch`.

    By hand: `TrainingLoop` already has `state_dict`; what a resumable in-process fit adds is the
    file (atomic), the key check and the random state, which no library here provides for a bare loop."""
    if every < 1:
        raise ValueError(f"resume_every must be >= 1, got {every}")
    key = _resume_key(imp, n_train)
    if path.exists():
        state = torch.load(path, map_location=imp._device(), weights_only=False)
        if not isinstance(state, dict) or state.get("key") != key:
            raise ValueError(
                f"resume_file {path} holds another run (model, settings or training rows differ); "
                "remove it or give another path"
            )
        imp.model_.load_state_dict(state["model"])
        loop.load_state_dict(state["loop"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def save_then(epoch: int, metrics: dict, improved: bool) -> None:
        if (epoch + 1) % every == 0 or epoch + 1 == loop.config.epochs:
            state = {
                "key": key,
                "model": imp.model_.state_dict(),
                "loop": loop.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            }
            atomic_write(path, lambda tmp: torch.save(state, tmp))
        if on_epoch is not None:
            on_epoch(epoch, metrics, improved)

    return save_then


def _fit_auto(imp, views, validation=None, on_epoch=None, on_candidate=None) -> None:
    """Fit `imp` (a `MultiViewImputer(model="auto")`): every candidate in turn, the winner kept in `imp`,
    the table in `imp.selection_`. `on_candidate(name, row)` runs after each candidate."""
    settings: AutoSettings = imp.auto_
    data = as_multiview(views, imp.likelihoods or None)
    data.check_no_empty_rows()
    for v, a in data.views.items():
        check_magnitude(v, a, data.columns[v])
    train_params = dict(imp.auto_train_params_)
    calibrate = train_params.pop("calibrate", True)
    budget = settings.budget
    folds = settings.cv_folds
    if folds and validation is not None:
        raise ValueError("cv_folds ranks on folds of the data's own rows: give no validation data with it")
    seed = int(train_params.get("seed", TrainConfig.seed))
    # (training rows, validation rows) per fold; (None, None): the candidate's own split
    splits = (
        [(np.setdiff1d(np.arange(data.n_samples), v), v) for v in fold_rows(data.n_samples, folds, seed)]
        if folds
        else [(None, None)]
    )

    def make(name, params, calibrate):
        return MultiViewImputer(
            name, likelihoods=imp.likelihoods or None, scalings=imp.scalings or None,
            **params, **train_params, calibrate=calibrate,
        )  # fmt: skip

    t0 = time.perf_counter()
    rows: list[dict] = []
    fitted: dict[str, MultiViewImputer] = {}
    for name, params in settings.candidates.items():
        elapsed = time.perf_counter() - t0
        row = {"model": name, "params": dict(params)}
        if budget is not None and rows and elapsed >= budget:
            note = f"the budget of {budget:g} s was spent ({elapsed:.0f} s) before it started"
            row.update(status="skipped", note=note)
            rows.append(row)
            if on_candidate is not None:
                on_candidate(name, row)
            continue
        one_pass = bool(MODEL_REGISTRY[name].one_pass)
        c0 = time.perf_counter()
        stopped = False
        fold_scores = []
        for train_rows, val_rows in splits:  # K folds, or the one split of the candidate's own fit
            cand = make(name, params, calibrate=False)
            limit = None if (budget is None or one_pass) else max(budget - (time.perf_counter() - t0), 1e-3)
            if train_rows is None:
                cand.fit(data, validation=validation, on_epoch=on_epoch, time_limit=limit)
            else:
                cand.fit(data.subset(train_rows), validation=data.subset(val_rows), on_epoch=on_epoch, time_limit=limit)
            if cand.validation_set_ is None:
                raise ValueError(
                    "model 'auto' ranks candidates on the validation split: give val_frac > 0 and at least "
                    f"20 samples (got {data.n_samples}), or validation data"
                )
            fold_scores.append(final_validation_score(cand.model_, cand.validation_set_, cand.train_config))
            stopped = stopped or getattr(cand, "stopped_at_time_limit_", False)
        if folds:
            metric_name = cand.train_config.val_score
            scores = pool_folds(fold_scores, metric_name, whole_view_share(data))
            row["fold_scores"] = [s["val_score"] for s in fold_scores]
        else:
            scores = fold_scores[0]
        row.update(
            val_score=scores["val_score"],
            val_crps=scores.get("val_crps", math.nan),
            val_rmse=scores["val_rmse"],
            val_rows=scores.get("rows"),
            view_weight=scores.get("view_weight"),
            fit_seconds=time.perf_counter() - c0,
            epochs_run=len(cand.history_),
            best_epoch=int(cand.best_epoch_ or 0),
            status="ok",
        )
        if stopped:
            row.update(status="stopped at budget", note=f"epochs stopped at the budget after {len(cand.history_)}")
        rows.append(row)
        fitted[name] = cand
        if on_candidate is not None:
            on_candidate(name, row)
    metric = f"val_{next(iter(fitted.values())).train_config.val_score}"
    winner_name = pick_winner(rows, settings.tie_tolerance, tie_se=settings.tie_se, metric=metric)
    rows = without_row_scores(rows)
    winner = fitted[winner_name]
    c0 = time.perf_counter()
    if folds:  # the winner of the folds, fitted as without them: on its own split, calibrated there
        winner = make(winner_name, settings.candidates[winner_name], calibrate=calibrate)
        winner.fit(data, on_epoch=on_epoch)
    cfg = replace(winner.train_config, calibrate=calibrate)
    if calibrate and not folds:
        val = winner.validation_set_
        winner.model_.calibrate(calibration_sets(val, cfg.val_hide_frac, cfg.seed), cfg.calibration_samples)
    for r in rows:
        r["winner"] = r["model"] == winner_name
    total = time.perf_counter() - t0
    imp.model_name = winner_name
    imp.model_params = dict(winner.model_params)
    imp.train_config = cfg
    imp.model_, imp.schema_ = winner.model_, winner.schema_
    imp.history_, imp.best_epoch_ = winner.history_, winner.best_epoch_
    imp.validation_index_, imp.validation_set_ = winner.validation_index_, winner.validation_set_
    imp.monitoring_reference_ = winner.monitoring_reference_
    imp.fit_seconds_ = total
    imp.selection_ = {
        "metric": f"val_{cfg.val_score}",
        "winner": winner_name,
        "tie_tolerance": settings.tie_tolerance,
        "tie_se": settings.tie_se,
        "budget_seconds": budget,
        "cv_folds": folds,
        "cost_order": list(settings.candidates),  # cheapest first (`auto.COST_ORDER`)
        "seconds": total,
        # the winner's calibration; with folds, its fit on the whole data as well
        "calibration_seconds": time.perf_counter() - c0 if (calibrate or folds) else 0.0,
        "candidates": rows,
    }


def _like_input(views, data: MultiViewData, out: dict[str, np.ndarray]):
    """Return `out` in the caller's container: MultiViewData, wide DataFrame, dict of frames/arrays."""
    if isinstance(views, MultiViewData):
        return data.with_views(out)
    if isinstance(views, pd.DataFrame):
        return data.with_views(out).to_frame().set_axis(views.index, axis=0)
    result = {}
    for v, a in out.items():
        given = views.get(v) if isinstance(views, Mapping) else None
        if isinstance(given, pd.DataFrame):
            result[v] = pd.DataFrame(a, index=given.index, columns=given.columns)
        else:
            result[v] = a
    return result
