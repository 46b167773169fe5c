"""The run request: what one training run is, typed and validated once at the edge, then passed down
unchanged to every worker — model name and config, loop config, resources and storage.

Both runners set up alike: `training.settings_for` builds the model config (with the data-size
defaults of `models.defaults.size_defaults` for `fit`, `RunRequest.sized_for` here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import DEFAULT_STORAGE, TrainConfig
from ..models import MODEL_REGISTRY
from ..models.defaults import size_defaults
from ..training import settings_for

TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig))


@dataclass(frozen=True)
class Resources:
    """The workers a run asks for: `per_worker` None leaves one CPU to Ray Data (`plan_worker_resources`);
    `wait_for_resources` is for autoscaling clusters, whose nodes appear on demand. With `min_workers`
    the run is elastic (Ray Train's `(min, max)` worker group): it starts, and goes on after losing a
    node, with as few as `min_workers`, and grows back to `num_workers` when nodes return."""

    num_workers: int = 1
    use_gpu: bool = False
    per_worker: Mapping[str, float] | None = None
    wait_for_resources: bool = False
    min_workers: int | None = None

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be ≥ 1, got {self.num_workers}")
        if self.min_workers is not None and not 1 <= self.min_workers <= self.num_workers:
            raise ValueError(f"min_workers must be in [1, num_workers={self.num_workers}], got {self.min_workers}")

    @property
    def worker_group(self) -> int | tuple[int, int]:
        """Ray Train's `ScalingConfig.num_workers`: a fixed size, or `(min, max)` when elastic."""
        if self.min_workers is None or self.min_workers == self.num_workers:
            return self.num_workers
        return (self.min_workers, self.num_workers)


@dataclass(frozen=True)
class Storage:
    """Where a run keeps its checkpoints: `path` (a local folder or a URI) / `run_name`. A stopped run
    resumes when run again with the same name; `resume_from` starts from another run's checkpoint."""

    path: str = DEFAULT_STORAGE
    run_name: str | None = None
    max_failures: int = 2
    checkpoint_every: int = 1
    resume_from: str | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be ≥ 1, got {self.checkpoint_every}")
        # workers run in other directories: local paths made absolute
        if "://" not in self.path:
            object.__setattr__(self, "path", str(Path(self.path).resolve()))


@dataclass(frozen=True)
class RunRequest:
    """One training run. `model_config` is the model's own config dataclass (validated when built)."""

    model: str
    model_config: Any
    train: TrainConfig
    resources: Resources = field(default_factory=Resources)
    storage: Storage = field(default_factory=Storage)
    likelihoods: Mapping[str, str] = field(default_factory=dict)
    scalings: Mapping[str, str] = field(default_factory=dict)

    def build_model(self, views):
        return MODEL_REGISTRY[self.model](views, self.model_config)

    def model_params(self) -> dict:
        return dataclasses.asdict(self.model_config)

    def with_values(self, model_params: Mapping | None = None, train: Mapping | None = None) -> RunRequest:
        """This request with some values replaced (a Tune trial's sampled ones), each checked once."""
        mc = _replace(self.model_config, model_params or {}, f"model {self.model!r}")
        tc = _replace(self.train, train or {}, "the train config") if train else self.train
        return dataclasses.replace(self, model_config=mc, train=tc)

    def sized_for(self, n_samples: int, given: frozenset[str] | set[str]) -> RunRequest:
        """This request with the data-size defaults for `n_samples` (before any split) on the keys
        not in `given`: what `MultiViewImputer.fit` applies, so both runners build the same model."""
        extra_model, extra_train = size_defaults(self.model, n_samples, frozenset(given))
        known = {f.name for f in fields(self.model_config)}  # a classic model has no widths
        extra_model = {k: v for k, v in extra_model.items() if k in known}
        return self.with_values(extra_model, extra_train) if extra_model or extra_train else self

    def with_storage(self, **changes) -> RunRequest:
        return dataclasses.replace(self, storage=dataclasses.replace(self.storage, **changes))

    def as_dict(self) -> dict:
        """Plain values, e.g. for a tracking run's parameters."""
        return {
            "model": self.model,
            "model_params": self.model_params(),
            "train": {k: v for k, v in dataclasses.asdict(self.train).items() if k != "progress"},
            "cluster": {**dataclasses.asdict(self.resources), **dataclasses.asdict(self.storage)},
            "likelihoods": dict(self.likelihoods),
            "scalings": dict(self.scalings),
        }


def _replace(config, values: Mapping, what: str):
    known = {f.name for f in fields(config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{what} has no parameter(s) {unknown}; it takes {sorted(known)}")
    return dataclasses.replace(config, **values) if values else config


def make_request(
    model: str,
    model_params: Mapping | None = None,
    train: TrainConfig | Mapping | None = None,
    *,
    resources: Resources | None = None,
    storage: Storage | None = None,
    likelihoods: Mapping[str, str] | None = None,
    scalings: Mapping[str, str] | None = None,
) -> RunRequest:
    """A `RunRequest` from plain values: the model config built (and so validated) here, once."""
    model_config, cfg = settings_for(model, model_params, train)
    return RunRequest(
        model=model,
        model_config=model_config,
        train=cfg,
        resources=resources or Resources(),
        storage=storage or Storage(),
        likelihoods=dict(likelihoods or {}),
        scalings=dict(scalings or {}),
    )


__all__ = ["TRAIN_KEYS", "Resources", "RunRequest", "Storage", "make_request"]
