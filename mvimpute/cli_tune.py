"""`mvimpute tune`: a hyper-parameter sweep with Ray Tune whose best trial becomes `champion`.

Registered on the `mvimpute` app by `mvimpute.cli`; it loads Ray, torch and MLflow only inside
its body, so that `mvimpute --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli_options import (
    NUM_SAMPLES_ENV,
    ConfigOpt,
    DataOpt,
    EpochsOpt,
    ModelOpt,
    NoTrackingOpt,
    Overrides,
    ParamOpt,
    SeedOpt,
    TrackingUriOpt,
    UseGpuOpt,
    VerboseOpt,
    job_items,
)


def epilog() -> str:
    from .config import TuneJobConfig, config_help

    return "Config keys and their defaults:\n\n\b\n" + config_help(76, TuneJobConfig)


class _Choice:
    search = ("optuna", "random")
    scheduler = ("asha", "fifo")


def tune(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    model: ModelOpt = None,
    epochs: EpochsOpt = None,
    seed: SeedOpt = None,
    param: ParamOpt = None,
    space: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Search space YAML.", show_default="tune_spaces/MODEL.yaml"),
    ] = None,
    num_samples: Annotated[
        int | None, typer.Option(min=1, envvar=NUM_SAMPLES_ENV, help="Trials to run.", show_default="8")
    ] = None,
    max_concurrent_trials: Annotated[
        int | None, typer.Option(min=1, help="Trials at once.", show_default="as many as the CPUs hold")
    ] = None,
    search: Annotated[str | None, typer.Option(help="optuna | random.", show_default="optuna")] = None,
    scheduler: Annotated[str | None, typer.Option(help="asha | fifo.", show_default="asha")] = None,
    num_workers: Annotated[
        int | None, typer.Option(min=1, help="Ray Train workers per trial.", show_default="1")
    ] = None,
    use_gpu: UseGpuOpt = None,
    name: Annotated[str | None, typer.Option(help="The sweep's name (its folder); --resume needs it.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the stopped sweep --name.")] = False,
    tracking_uri: TrackingUriOpt = None,
    no_tracking: NoTrackingOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Sweep hyper-parameters with Ray Tune (ASHA + Optuna or random search) over Ray Train runs;
    register the best trial's model in MLflow under the alias `champion`.

    Each trial minimises the self-supervised validation score (train.val_score: crps or rmse; TAE: only
    epochs after its warm-up). Prints one line per finished trial and a summary. A stopped sweep
    continues with --resume --name NAME (finished trials are kept)."""
    from . import console

    for value, allowed, option in ((search, _Choice.search, "--search"), (scheduler, _Choice.scheduler, "--scheduler")):
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{value!r}: choose one of {list(allowed)}", param_hint=option)
    console.configure(verbose)
    extra = {"num_workers": num_workers, "use_gpu": use_gpu}
    items = job_items(overrides, data=data, model=model, epochs=epochs, seed=seed, params=param, extra=extra)
    from .engine.resources import ResourceRequestError
    from .jobs.tune import tune_main

    try:
        tune_main(
            config,
            items,
            space=space,
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent_trials,
            search=search,
            scheduler=scheduler,
            name=name,
            tracking_uri=tracking_uri,
            tracking=False if no_tracking else None,
            resume=resume,
            echo=True,
        )
    except ResourceRequestError as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo(f"sweep stopped by Ctrl-C; continue it with --resume --name {name or 'NAME'}", err=True)
        raise typer.Exit(130) from None
    except ValueError as err:
        raise typer.BadParameter(str(err).removeprefix("config: "), param_hint="--space or config") from None
