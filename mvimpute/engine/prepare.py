"""Data preparation for training runs: read a data set once, split it by a stable hash of the id (the
rule `MultiViewImputer.fit` uses too), fit the view schema on the training rows in one streaming
pass, and hand Ray Train the tensor datasets its workers read — once, however many runs follow."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..config import TrainConfig
from ..data.multiview import ViewSchema
from ..data.ray_data import RayMultiView, batch_from_tensors, read_dataset
from ..models.base import LIKELIHOODS
from ..training import ValidationSet, make_validation_set


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


def read_data(
    data,
    likelihoods: Mapping[str, str] | None = None,
    scalings: Mapping[str, str] | None = None,
    num_partitions: int | None = None,
) -> RayMultiView:
    """`data` (a dataset spec, an embedded name, a `MultiViewData` or a `RayMultiView`) as a Ray Data
    set with the given per-view likelihoods/scalings over its own; per-view tables joined once."""
    rmv = _merge_choices(read_dataset(data, num_partitions=num_partitions), likelihoods, scalings)
    if rmv.source.get("joined"):
        rmv = dataclasses.replace(rmv, dataset=rmv.dataset.materialize())  # the id join runs once
    return rmv


def prepare_data(
    data,
    train_config: TrainConfig | None = None,
    *,
    likelihoods: Mapping[str, str] | None = None,
    scalings: Mapping[str, str] | None = None,
    schema: ViewSchema | None = None,
    n_train: int | None = None,
    num_partitions: int | None = None,
    materialize: bool = False,
) -> PreparedData:
    """Split `data` (what `read_data` takes, or its result) by the id hash (`train_config.val_frac`,
    `.seed`) and fit the schema on the training rows — once.

    `schema` (with `n_train`), e.g. a checkpoint's, is used instead of fitting one. `materialize`
    keeps the scaled tensor datasets in Ray's object store, so that many runs (a sweep's trials)
    read them without reading or scaling the data again. Nothing given is changed. Bad data (±Inf,
    empty rows, non-numeric values) is a `ValueError` naming the view and column."""
    cfg = train_config or TrainConfig(progress=False)
    rmv = read_data(data, likelihoods, scalings, num_partitions)
    train, val = rmv.split(cfg.val_frac, cfg.seed)
    if schema is not None and schema.columns != rmv.columns:
        raise ValueError("the given schema was fitted on other views/columns than this data set")
    if schema is None or n_train is None:
        fitted, n_train = train.fit_schema()  # validates the data (±Inf, empty rows, non-numeric)
        schema = schema or fitted
    datasets = _tensor_datasets(train, val if cfg.val_frac > 0 else None, schema, materialize)
    return PreparedData(
        train=train,
        val=val if cfg.val_frac > 0 else None,
        schema=schema,
        n_train=int(n_train),
        datasets=datasets,
        val_frac=cfg.val_frac,
        seed=cfg.seed,
        imputer={"likelihoods": dict(rmv.likelihoods), "scalings": dict(rmv.scalings)},
        source=json.loads(json.dumps(rmv.source, default=str)),
    )


def _tensor_datasets(train: RayMultiView, val: RayMultiView | None, schema: ViewSchema, materialize: bool) -> dict:
    """The datasets workers read: "train", "fit" (the pass after training; the same rows) and "val"."""
    datasets = {"train": train.tensor_dataset(schema)}
    if val is not None:
        datasets["val"] = val.tensor_dataset(schema, with_id=True)
    if materialize:
        datasets = {k: ds.materialize() for k, ds in datasets.items()}
    datasets["fit"] = datasets["train"]
    for ds in datasets.values():
        # workers re-read their shard every epoch: Ray Data's bars would print a screenful per epoch
        # through the driver's log, so these datasets run without them; rank 0 prints a line per epoch
        ds.context.enable_progress_bars = False
    return datasets


__all__ = ["PreparedData", "build_validation_set", "prepare_data", "read_data", "validation_set_from_batches"]
