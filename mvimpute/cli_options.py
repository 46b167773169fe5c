"""What the `mvimpute` commands share: their options, the help epilog of config keys, and the one
way flags become `key.path=value` overrides of the job config. Torch-free, so `--help` is fast."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer

from .names import DATASET_NAMES, MODEL_NAMES

DATA_HELP = f"Embedded data set ({', '.join(DATASET_NAMES)}) or a dataset spec YAML."
MODEL_HELP = f"Model: {' | '.join(MODEL_NAMES)} | auto."


# ----------------------------------------------------------------------------- shared options

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Config overrides KEY.PATH=VALUE (YAML values); keys below.", show_default=False),
]
ConfigOpt = Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Job config YAML.")]
DataOpt = Annotated[str | None, typer.Option("--data", "--dataset", help=DATA_HELP, show_default="digits-halves")]
ModelOpt = Annotated[str | None, typer.Option(help=MODEL_HELP, show_default="jpvae")]
# The jobs' sizes also come from the environment (a cluster's ConfigMap or a RayJob's runtime env), so
# the same entry point runs longer or shorter without editing its command line.
EPOCHS_ENV = "MVIMPUTE_EPOCHS"
NUM_SAMPLES_ENV = "MVIMPUTE_NUM_SAMPLES"
EpochsOpt = Annotated[int | None, typer.Option(min=1, envvar=EPOCHS_ENV, help="Training epochs.", show_default="100")]
SeedOpt = Annotated[int | None, typer.Option(help="Training seed.", show_default="0")]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param", "-p", help="Model option KEY=VALUE, e.g. -p latent_dim=10 (see `models`).", show_default=False
    ),
]
UseGpuOpt = Annotated[bool | None, typer.Option("--use-gpu/--no-gpu", help="One GPU per worker.", show_default=False)]
TrackingUriOpt = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI.", show_default="$MLFLOW_TRACKING_URI or sqlite:///mlflow.db"),
]
NoTrackingOpt = Annotated[bool, typer.Option("--no-tracking", help="Run without MLflow.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's and MLflow's own logs.")]


def local_path_exists(value: str | None) -> str | None:
    """A typer callback: a local path must exist; a URI (`s3://…`) is checked when it is read."""
    if value is not None and "://" not in value and not Path(value).exists():
        raise typer.BadParameter(f"path {value!r} does not exist")
    return value


CheckpointOpt = Annotated[
    str,
    typer.Option(
        "--checkpoint", "--model-path", callback=local_path_exists,
        help="A checkpoint from `fit` or `train`: a file, a folder holding model.pt, or a URI (s3://…).",
    ),
]  # fmt: skip
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1, ...", show_default="auto")]


def epilog() -> str:
    from .config import config_help

    # click rewraps epilog paragraphs; \b keeps this block's lines as they are
    return "Config keys and their defaults:\n\n\b\n" + config_help(76)


def job_items(
    overrides: list[str] | None,
    *,
    data: str | None = None,
    model: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    params: list[str] | None = None,
    extra: dict | None = None,
) -> list[str]:
    """Flags and `-p` model options as `key.path=value` overrides, after the positional ones."""
    from .config import TrainConfig, flag_overrides

    items = list(overrides or [])
    flags = {"data": data, "model": model, "epochs": epochs, "seed": seed, **(extra or {})}

    train_keys = {f.name for f in fields(TrainConfig)} - {"progress"}
    own = {"epochs": "--epochs", "seed": "--seed", "device": "--device"}
    for item in params or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not key=value", param_hint="--param")
        if key in own:
            raise typer.BadParameter(f"{key!r} has its own option: use {own[key]}", param_hint="--param")
        section = "train" if key in train_keys else "model_params"  # as MultiViewImputer(**params) splits them
        items.append(f"{section}.{key}={value}")
    return items + flag_overrides(flags)


def load_job(config: Path | None, items: list[str]):
    from .config import load_job_config

    try:
        return load_job_config(config, items)
    except ValueError as err:
        raise typer.BadParameter(str(err).removeprefix("config: "), param_hint="--param or config") from None
