"""Typed configs shared by every runner: the training loop's `TrainConfig` and the job config
(`data`, `model`, `model_params`, `train`, `cluster`, `mlflow` sections) that `fit`, `train` and
`tune` read from YAML plus `key.path=value` overrides.

Torch-free, so that the command line can list keys and defaults in its help without loading
the models.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .names import AUTO, MODEL_NAMES

DEFAULT_STORAGE = "ray_results"
VAL_SCORES = ("crps", "rmse")


@dataclass
class TrainConfig:
    """The training loop's settings (every runner: `fit`, Ray Train workers, Tune trials)."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    patience: int | None = 20
    val_frac: float = 0.1
    val_hide_frac: float = 0.2
    val_view_frac: float = 0.2
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    # The early-stopping score on the hidden validation entries: "crps" (default; the CRPS of
    # `val_samples` raw predictive draws, a proper scoring rule, so selection rewards calibrated
    # spread as well as accuracy) or "rmse" (of the point imputation). Both are in the history
    # as `val_crps` and `val_rmse`; the one selected is also `val_score`, which ranks Tune trials.
    val_score: str = "crps"
    val_samples: int = 20
    # Split-conformal calibration of the draws' intervals on the same validation split, fitted
    # once training ends with `calibration_samples` draws per entry (see models/calibration.py).
    calibrate: bool = True
    calibration_samples: int = 100

    @property
    def select_metric(self) -> str:
        """The history key that picks the best epoch (and ranks trials): `val_score`."""
        return "val_score"

    def __post_init__(self) -> None:
        _check_field_types(self)
        if self.val_score not in VAL_SCORES:
            raise ValueError(f"val_score must be one of {VAL_SCORES}, got {self.val_score!r}")
        if self.val_samples < 2 or self.calibration_samples < 2:
            raise ValueError(
                f"val_samples and calibration_samples must be ≥ 2, got {self.val_samples}, {self.calibration_samples}"
            )
        if self.epochs < 1:
            raise ValueError(f"epochs must be ≥ 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if not 0 <= self.val_frac < 1:
            raise ValueError(f"val_frac must lie in [0, 1), got {self.val_frac}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def _allowed(tp) -> tuple[type, ...]:
    args = typing.get_args(tp) if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union else (tp,)
    return tuple(type(None) if a is None else a for a in args)


def _check_field_types(obj) -> None:
    """A field given a value of the wrong type (`epochs=2.5`, `lr="fast"`) is a `ValueError` naming it."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        allowed = _allowed(hints[f.name])
        ok = any(
            value is None
            if a is type(None)
            else isinstance(value, bool)
            if a is bool
            else isinstance(value, int) and not isinstance(value, bool)
            if a is int
            else isinstance(value, int | float) and not isinstance(value, bool)
            if a is float
            else isinstance(value, a)
            for a in allowed
        )
        if not ok:
            names = " or ".join("null" if a is type(None) else a.__name__ for a in allowed)
            raise ValueError(f"{f.name} must be {names}, got {value!r}")


def train_config(config: TrainConfig | Mapping | None) -> TrainConfig:
    """A `TrainConfig` from a mapping; unknown keys are a `ValueError` that lists the known ones."""
    if config is None:
        return TrainConfig(progress=False)
    if isinstance(config, TrainConfig):
        return config
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"train config has no field(s) {unknown}; it takes {sorted(known)}")
    return TrainConfig(**dict(config))


# ----------------------------------------------------------------------------- the job config


class ClusterSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(1, ge=1)
    # elastic: a run that loses a node goes on with as few as min_workers (None: always num_workers)
    min_workers: int | None = Field(None, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None  # default: leave one CPU to Ray Data
    wait_for_resources: bool = False  # autoscaling clusters: wait for nodes instead of failing fast
    max_failures: int = Field(2, ge=-1)
    checkpoint_every: int = Field(1, ge=1)
    storage_path: str = DEFAULT_STORAGE


class MlflowSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "mvimpute"
    registered_model_name: str | None = None  # default: mvimpute-<model>
    alias: str | None = "champion"  # given to the registered version; serving loads models:/<name>@champion
    n_draws: int = Field(50, ge=1)


class TrainJobConfig(BaseModel):
    """The job config (YAML): data, model, training, cluster and tracking sections."""

    model_config = ConfigDict(extra="forbid")

    data: str = "digits-halves"
    model: str = "jpvae"
    model_params: dict = Field(default_factory=dict)
    train: dict = Field(default_factory=dict)
    likelihoods: dict[str, str] = Field(default_factory=dict)
    scalings: dict[str, str] = Field(default_factory=dict)
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    mlflow: MlflowSection = Field(default_factory=MlflowSection)
    run_name: str | None = None
    resume_from: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TrainJobConfig:
        if self.model not in MODEL_NAMES and self.model != AUTO:
            raise ValueError(f"unknown model {self.model!r}; choose one of {sorted(MODEL_NAMES)} or {AUTO!r}")
        if self.model == AUTO:
            from .auto import AutoSettings

            AutoSettings.from_params(self.model_params)  # candidates, budget, tie_tolerance checked
        else:
            from .models import MODEL_REGISTRY
            from .models.base import config_from_kwargs

            config_from_kwargs(MODEL_REGISTRY[self.model].config_class, self.model_params, self.model)
        train_config(self.train)  # checked; kept as given, so data-size defaults still apply to the rest
        return self

    def resolved(self) -> dict:
        """The config with every train key filled in (what `--print-config` shows)."""
        return {**self.model_dump(mode="json"), "train": asdict(train_config({"progress": False, **self.train}))}

    @property
    def registered_model_name(self) -> str:
        return self.mlflow.registered_model_name or f"mvimpute-{self.model}"


class TuneSection(BaseModel):
    """The sweep (`mvimpute tune`): search space file, trials, search algorithm and scheduler."""

    model_config = ConfigDict(extra="forbid")

    space: str | None = None  # default: tune_spaces/<model>.yaml
    num_samples: int = Field(8, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)  # default: as many as the CPUs hold with room for Ray Data
    search: typing.Literal["optuna", "random"] = "optuna"
    scheduler: typing.Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)  # ASHA: epochs every trial runs (at least to the end of a warm-up)
    reduction_factor: float = Field(2.0, gt=1)
    name: str | None = None  # the sweep's folder under cluster.storage_path; default <model>-sweep-<time>
    # train: each trial a Ray Train run (workers, DDP); local: the trial's own process trains (one worker,
    # the same scores without a Ray Train run's start); auto: local for one worker per trial, else train
    runner: typing.Literal["auto", "train", "local"] = "auto"


class TuneJobConfig(TrainJobConfig):
    """The sweep's job config: the train job's sections plus `tune`."""

    tune: TuneSection = Field(default_factory=TuneSection)


def parse_override(item: str) -> tuple[list[str], object]:
    if "=" not in item:
        raise ValueError(f"override {item!r} must read key.path=value")
    key, value = item.split("=", 1)
    if not key:
        raise ValueError(f"override {item!r} has no key")
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as err:
        raise ValueError(f"override {item!r}: cannot parse {value!r} as YAML ({err})") from None
    return key.split("."), parsed


# the jobs' keyword flags (the command line's options) and the job-config keys they set
FLAG_KEYS = {
    "data": "data",
    "model": "model",
    "epochs": "train.epochs",
    "seed": "train.seed",
    "num_workers": "cluster.num_workers",
    "use_gpu": "cluster.use_gpu",
    "run_name": "run_name",
    "resume_from": "resume_from",
    "tracking_uri": "mlflow.tracking_uri",
    "registered_model_name": "mlflow.registered_model_name",
    "tracking": "mlflow.enabled",
    "space": "tune.space",
    "num_samples": "tune.num_samples",
    "max_concurrent_trials": "tune.max_concurrent_trials",
    "search": "tune.search",
    "scheduler": "tune.scheduler",
    "name": "tune.name",
}


def read_yaml_mapping(path: str | Path, what: str, expected: str = "a mapping") -> dict:
    """A YAML file's top-level mapping; a missing file, bad YAML or another type is a `ValueError`
    naming `what` and the path."""
    where = f"{what} {str(path)!r}"
    if not Path(path).is_file():
        raise ValueError(f"{where}: no such file")
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{where}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected {expected}")
    return raw


def flag_overrides(flags: Mapping[str, object]) -> list[str]:
    """Flags (`FLAG_KEYS` names or dotted keys) as `key.path=value` overrides, values written as YAML;
    None ones left out. An unknown flag name is a `TypeError`, as an unknown keyword argument is."""
    items = []
    for name, value in flags.items():
        key = FLAG_KEYS.get(name, name if "." in name else None)
        if key is None:
            raise TypeError(f"unknown flag {name!r}; flags are {sorted(FLAG_KEYS)}")
        if value is not None:
            text = yaml.safe_dump(str(value) if isinstance(value, Path) else value, default_flow_style=True)
            items.append(f"{key}={text.strip().removesuffix('...').strip()}")
    return items


def load_job_config(
    config: str | Path | Mapping | None = None, overrides: Sequence[str] = (), kind: type[BaseModel] = TrainJobConfig
) -> TrainJobConfig:
    """The job config (`kind`: `TrainJobConfig`, `TuneJobConfig`) from YAML (or a dict) with
    `key.path=value` overrides (values parsed as YAML)."""
    if config is None:
        raw: dict = {}
    elif isinstance(config, Mapping):
        raw = dict(config)
    else:
        path = Path(config)
        raw = read_yaml_mapping(path, "config")
        data = raw.get("data")
        if isinstance(data, str) and data.endswith((".yaml", ".yml")) and not Path(data).is_absolute():
            if not Path(data).exists() and (path.parent / data).exists():
                raw["data"] = str(path.parent / data)
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    try:
        return kind.model_validate(raw)
    except ValidationError as err:
        parts = []
        for e in err.errors():
            loc = ".".join(str(x) for x in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        raise ValueError("config: " + "; ".join(parts)) from None


def config_keys(kind: type[BaseModel] = TrainJobConfig) -> list[tuple[str, object]]:
    """Every job-config key (dotted) with its default, in file order; `model_params` keys depend on the model."""
    out: list[tuple[str, object]] = []
    for name, f in kind.model_fields.items():
        if name == "train":
            for tf in fields(TrainConfig):
                if tf.name != "progress":
                    out.append((f"train.{tf.name}", tf.default if tf.default is not MISSING else None))
        elif isinstance(f.default_factory, type) and issubclass(f.default_factory, BaseModel):
            for sub, sf in f.default_factory.model_fields.items():
                out.append((f"{name}.{sub}", sf.default))
        elif name in ("model_params", "likelihoods", "scalings"):
            out.append((f"{name}.<key>", "{}"))
        else:
            out.append((name, f.default))
    return out


def config_help(width: int = 78, kind: type[BaseModel] = TrainJobConfig) -> str:
    """The keys and defaults as a compact block for `--help` (fits 80 columns)."""
    items = [f"{k}={'null' if v is None else v}" for k, v in config_keys(kind)]
    lines, line = [], ""
    for it in items:
        if line and len(line) + 2 + len(it) > width:
            lines.append(line)
            line = ""
        line = f"{line}  {it}" if line else it
    lines.append(line)
    return "\n".join(lines)


def default_config_yaml() -> str:
    """The resolved default job config as YAML (what `--print-config` shows with no overrides)."""
    return yaml.safe_dump(TrainJobConfig().resolved(), sort_keys=False)


__all__ = [
    "DEFAULT_STORAGE",
    "ClusterSection",
    "MlflowSection",
    "TrainConfig",
    "TrainJobConfig",
    "TuneJobConfig",
    "TuneSection",
    "config_help",
    "config_keys",
    "flag_overrides",
    "load_job_config",
    "parse_override",
    "train_config",
]
