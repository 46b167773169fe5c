"""The `mvimpute` command line. One vocabulary for every command:

    --data      an embedded data set (digits-halves, synthetic-omics) or a dataset spec YAML
    --model     jpvae | tae | mvae | miwae | mean | knn | mice | auto    --param/-p KEY=VALUE (YAML value)
    --epochs N  --seed S   --config FILE.yaml   KEY.PATH=VALUE ...      any config key (see --help)
    --checkpoint FILE      a model saved by `fit` or `train`
    --verbose              Ray's and MLflow's own logs (default: one line per epoch and a summary)

    mvimpute datasets
    mvimpute models
    mvimpute fit --data digits-halves --model jpvae --epochs 60 --out jpvae.pt -p prior=orthogonal
    mvimpute score --checkpoint jpvae.pt --data digits-halves --mechanism view --rate 0.5
    mvimpute impute --checkpoint jpvae.pt --input in.parquet --output out.parquet --id-column sample_id
    mvimpute serve --model-uri models:/mvimpute-jpvae@champion
    mvimpute train --data digits-halves --num-workers 2 --epochs 20 train.batch_size=128
    mvimpute tune --data digits-halves --model jpvae --epochs 20 --num-samples 8
    mvimpute evaluate --data digits-halves --label label --models jpvae,tae

`fit` trains in-process on the training part of a seeded split and records the split in the
checkpoint; `score` scores on that split's test part. Heavy modules (torch, Ray, MLflow) load
inside the commands, so `--help` answers at once.
"""

from __future__ import annotations

import json
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from . import cli_tune
from .cli_options import (
    DATA_HELP,
    CheckpointOpt,
    ConfigOpt,
    DataOpt,
    DeviceOpt,
    EpochsOpt,
    ModelOpt,
    NoTrackingOpt,
    Overrides,
    ParamOpt,
    SeedOpt,
    TrackingUriOpt,
    UseGpuOpt,
    VerboseOpt,
    epilog,
    job_items,
    load_job,
)
from .cli_serving import impute, serve_command  # light at import: heavy modules load in the commands
from .files import atomic_write
from .names import DATASET_NAMES, MODEL_NAMES

app = typer.Typer(
    name="mvimpute",
    help="Multi-view imputation with honest uncertainty (TAE, JPVAE, MVAE, MIWAE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich panels truncate option names and defaults at 80 columns
    context_settings={"max_content_width": 80, "help_option_names": ["-h", "--help"]},
)


class Mechanism(str, Enum):
    view = "view"
    mcar = "mcar"
    mar = "mar"


def load_data(name_or_spec: str):
    """An embedded data set by name, or the data a spec YAML describes (read with Ray Data), in memory."""
    from .data import load_dataset

    if name_or_spec in DATASET_NAMES:
        return load_dataset(name_or_spec)
    if not name_or_spec.endswith((".yaml", ".yml")):
        raise typer.BadParameter(
            f"unknown data set {name_or_spec!r}: give one of {list(DATASET_NAMES)} or a dataset spec YAML",
            param_hint="--data",
        )
    from .data.ray_data import read_spec
    from .data.spec import validate_spec

    try:
        validate_spec(name_or_spec)
        return read_spec(name_or_spec).to_multiview()
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--data") from None


def load_imputer(path: Path, device: str = "cpu"):
    from .imputer import MultiViewImputer

    try:
        return MultiViewImputer.load(path, device=device)
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise typer.BadParameter(str(err), param_hint="--checkpoint") from None


def metrics_table(metrics: dict[str, float], views: list[str]) -> str:
    """Rows: metric; columns: all views together, then each view."""
    names: list[str] = []
    for key in metrics:
        base = key.split("/", 1)[0]
        if base not in names:
            names.append(base)
    header = ["metric", "all", *views]
    rows = [header]
    for base in names:
        cells = [base]
        for col in [None, *views]:
            val = metrics.get(base if col is None else f"{base}/{col}")
            cells.append("" if val is None else f"{val:.4g}")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- commands


@app.command()
def datasets() -> None:
    """List the embedded data sets with their views, widths and likelihoods."""
    from .data import load_dataset

    for name in DATASET_NAMES:
        data = load_dataset(name)
        typer.echo(f"{name}  ({data.n_samples} samples)")
        width = max(len(v) for v in data.view_names)
        for v in data.view_names:
            typer.echo(f"  {v.ljust(width)}  {data.dims[v]:>5}  {data.likelihoods[v]}")


@app.command()
def models() -> None:
    """List the models with their options (-p KEY=VALUE, model_params.KEY) and defaults."""
    from dataclasses import MISSING

    from .models import MODEL_REGISTRY

    for name in MODEL_NAMES:
        cls = MODEL_REGISTRY[name]
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        typer.echo(f"{name}  {doc}")
        for f in fields(cls.config_class):
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            typer.echo(f"  {f.name}={default}")


@app.command(epilog=epilog())
def fit(
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option(help="Where to write the checkpoint (.pt).", dir_okay=False)] = Path("model.pt"),
    config: ConfigOpt = None,
    data: DataOpt = None,
    model: ModelOpt = None,
    epochs: EpochsOpt = None,
    seed: SeedOpt = None,
    param: ParamOpt = None,
    test_frac: Annotated[float, typer.Option(min=0.0, max=0.95, help="Share held out for `score` (0: none).")] = 0.2,
    split_seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 0,
    device: DeviceOpt = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="A progress bar.", show_default="on a terminal")
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Train a model in-process (no Ray) on the training split and save it.

    Prints one line per epoch (a progress bar on a terminal) and a summary."""
    from . import console

    console.configure(verbose)
    job = load_job(config, job_items(overrides, data=data, model=model, epochs=epochs, seed=seed, params=param))
    frame = load_data(job.data)
    train_part = frame.split(test_frac, split_seed)[0] if test_frac > 0 else frame
    show_bar = console.is_tty() if progress is None else progress
    from .imputer import MultiViewImputer

    try:
        imp = MultiViewImputer(
            job.model,
            likelihoods=job.likelihoods or None,
            scalings=job.scalings or None,
            **job.model_params,
            **{**job.train, "progress": show_bar, **({"device": device} if device else {})},
        )
    except (ValueError, TypeError) as err:
        raise typer.BadParameter(str(err), param_hint="--param") from None
    from .engine.callbacks import epoch_line

    def on_epoch(epoch: int, metrics: dict, improved: bool) -> None:
        if not show_bar:
            console.echo(epoch_line(metrics, imp.train_config.epochs, improved))

    def on_candidate(name: str, row: dict) -> None:
        score_text = f"val_score {row['val_score']:.4g}" if "val_score" in row else row.get("note", "")
        console.echo(f"candidate {name}: {row['status']}, {score_text}")

    try:
        imp.fit(train_part, on_epoch=on_epoch, on_candidate=on_candidate)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--data") from None
    imp.provenance_ = {"data": job.data, "test_frac": test_frac, "split_seed": split_seed}
    best = next((h for h in imp.history_ if h.get("epoch") == imp.best_epoch_), {})
    key = next((k for k in (f"val_{imp.train_config.val_score}", "train_loss") if k in best), None)  # the selected
    score_text = f"{key} {best[key]:.4g}" if key else "no score"
    path = imp.save(out)
    if imp.selection_ is not None:
        from .auto import selection_table

        sel = imp.selection_
        where = f"{sel['cv_folds']} folds of the rows" if sel.get("cv_folds") else "the validation split"
        typer.echo(f"auto: candidates ranked on {sel['metric']} of {where} (* the winner)")
        typer.echo(selection_table(sel["candidates"], sel["winner"]))
    typer.echo(
        f"fitted {imp.model_name if imp.selection_ is None else 'auto → ' + imp.model_name} on "
        f"{train_part.n_samples} samples of {job.data} in {imp.fit_seconds_:.1f} s; "
        f"best epoch {imp.best_epoch_} of {len(imp.history_)} ({score_text}); saved {path}"
    )


@app.command()
def score(
    checkpoint: CheckpointOpt,
    data: DataOpt = None,
    mechanism: Annotated[Mechanism, typer.Option(help="Hide whole views, MCAR or MAR entries.")] = Mechanism.view,
    rate: Annotated[float, typer.Option(help="Share to hide, in [0, 1).")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the masking.")] = 0,
    test_frac: Annotated[
        float | None, typer.Option(min=0.0, max=0.95, help="Test share (0: all samples).", show_default="as in fit")
    ] = None,
    split_seed: Annotated[int | None, typer.Option(help="Seed of the split.", show_default="as in fit")] = None,
    n_samples: Annotated[int, typer.Option(min=0, help="Draws for intervals and CRPS (0: point metrics).")] = 100,
    json_out: Annotated[Path | None, typer.Option("--json", dir_okay=False, help="Also write the scores here.")] = None,
    device: DeviceOpt = None,
) -> None:
    """Hide entries of the test split, impute them, and score against the truth.

    The split is the one `fit` recorded in the checkpoint; a different --test-frac or --split-seed
    on the same data is refused (it would score training samples)."""
    from . import masking
    from .scoring import score as score_imputer

    imp = load_imputer(checkpoint, device or "auto")
    recorded = getattr(imp, "provenance_", None) or {}
    data = data or recorded.get("data") or "digits-halves"
    same_data = recorded.get("data") == data
    for name, given, key, _default in (
        ("--test-frac", test_frac, "test_frac", 0.2),
        ("--split-seed", split_seed, "split_seed", 0),
    ):
        if same_data and key in recorded and given is not None and given != recorded[key]:
            raise typer.BadParameter(
                f"{checkpoint} was fitted on {data} with {name} {recorded[key]}; {name} {given} would score "
                "training samples: leave it out (the recorded split is used) or refit",
                param_hint=name,
            )
    test_frac = test_frac if test_frac is not None else recorded.get("test_frac", 0.2) if same_data else 0.2
    split_seed = split_seed if split_seed is not None else recorded.get("split_seed", 0) if same_data else 0
    frame = load_data(data)
    test = frame.split(test_frac, split_seed)[1] if test_frac > 0 else frame
    hide = {Mechanism.view: masking.drop_views, Mechanism.mcar: masking.mcar, Mechanism.mar: masking.mar}
    try:
        corrupted = hide[mechanism](test, rate, seed=seed)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--rate") from None
    try:
        metrics = score_imputer(imp, corrupted.truth, corrupted.data, n_samples=n_samples)
    except ValueError as err:
        raise typer.BadParameter(f"cannot score {str(checkpoint)!r} on {data!r}: {err}", param_hint="--data") from None
    typer.echo(
        f"{imp.model_name} on {data}: {test.n_samples} test samples (test share {test_frac}, split seed {split_seed}), "
        f"mechanism {mechanism.value}, rate {rate}, {int(metrics['n_hidden'])} hidden entries"
    )
    typer.echo(metrics_table(metrics, test.view_names))
    if json_out is not None:
        report = {
            "checkpoint": str(checkpoint),
            "model": imp.model_name,
            "data": data,
            "mechanism": mechanism.value,
            "rate": rate,
            "seed": seed,
            "test_frac": test_frac,
            "split_seed": split_seed,
            "n_samples": n_samples,
            "metrics": metrics,
        }
        atomic_write(json_out, lambda p: p.write_text(json.dumps(report, indent=2)))
        typer.echo(f"wrote {json_out}")


app.command()(impute)
app.command("serve")(serve_command)


@app.command(epilog=epilog())
def train(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    model: ModelOpt = None,
    epochs: EpochsOpt = None,
    seed: SeedOpt = None,
    param: ParamOpt = None,
    num_workers: Annotated[int | None, typer.Option(min=1, help="Ray Train workers (DDP).", show_default="1")] = None,
    use_gpu: UseGpuOpt = None,
    run_name: Annotated[str | None, typer.Option(help="Run name; a stopped run's name resumes it.")] = None,
    resume_from: Annotated[str | None, typer.Option(help="A checkpoint (file or folder) to continue from.")] = None,
    tracking_uri: TrackingUriOpt = None,
    registered_model_name: Annotated[
        str | None, typer.Option(help="Registered model name.", show_default="mvimpute-MODEL")
    ] = None,
    no_tracking: NoTrackingOpt = False,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved config and exit.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Train with Ray Train (local Ray, or the cluster at RAY_ADDRESS); track the run and register
    the model in MLflow under the alias `champion`.

    Prints one line per epoch and a summary: best epoch and score, MLflow run id, model URI.
    Ctrl-C stops the run and keeps its checkpoints: rerun with the same --run-name to resume."""
    from . import console

    console.configure(verbose)
    extra = dict(
        num_workers=num_workers,
        use_gpu=use_gpu,
        run_name=run_name,
        resume_from=resume_from,
        tracking_uri=tracking_uri,
        registered_model_name=registered_model_name,
        tracking=False if no_tracking else None,
    )
    items = job_items(overrides, data=data, model=model, epochs=epochs, seed=seed, params=param, extra=extra)
    job = load_job(config, items)
    if print_config:
        import yaml

        typer.echo(yaml.safe_dump(job.resolved(), sort_keys=False).rstrip())
        return
    from .engine.resources import ResourceRequestError
    from .engine.runner import RunInterrupted
    from .jobs.train import run_job

    try:
        run_job(job, echo=True)
    except ResourceRequestError as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(2) from None
    except RunInterrupted as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(130) from None
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="config") from None


def split_items(values: list[str] | None, default: list, option: str, cast=str) -> list:
    """Repeated and/or comma-separated option values (`--rates 0.2,0.5` or `--rates 0.2 --rates 0.5`);
    a single empty value is an empty list."""
    if values is None:
        return list(default)
    out = []
    for item in (x.strip() for v in values for x in v.split(",")):
        if not item:
            continue
        try:
            out.append(cast(item))
        except ValueError:
            raise typer.BadParameter(f"{item!r} is not a valid {cast.__name__}", param_hint=option) from None
    return out


@app.command()
def evaluate(
    data: Annotated[str, typer.Option("--data", "--dataset", help=DATA_HELP)] = "synthetic-omics",
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models", "--model", help="Models, comma-separated or repeated; '' for none.", show_default="jpvae,tae"
        ),
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="MODEL.KEY=VALUE, e.g. -p tae.C=15.", show_default=False)
    ] = None,
    baselines: Annotated[
        list[str] | None,
        typer.Option(help="Classic imputers; '' for none.", show_default="column-mean,knn,mice,missforest"),
    ] = None,
    mechanisms: Annotated[
        list[str] | None, typer.Option("--mechanisms", "--mechanism", help="mcar, view, mar.", show_default="mcar,view")
    ] = None,
    rates: Annotated[list[str] | None, typer.Option(help="Shares to hide.", show_default="0.2,0.5")] = None,
    seeds: Annotated[list[str] | None, typer.Option(help="Seeds of split and masks.", show_default="0,1,2")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of every model.")] = 100,
    n_samples: Annotated[int, typer.Option(min=1, help="Posterior draws for intervals and CRPS.")] = 100,
    label: Annotated[str | None, typer.Option(help="Obs column for downstream accuracy (digits: label).")] = None,
    out: Annotated[Path, typer.Option(file_okay=False, help="Output folder.")] = Path("outputs/evaluate"),
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI.", show_default="$MLFLOW_TRACKING_URI")
    ] = None,
    mlflow: Annotated[
        bool | None,
        typer.Option("--mlflow/--no-mlflow", help="Log one MLflow run.", show_default="with a tracking URI"),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="One line per fitted cell.")] = True,
    verbose: VerboseOpt = False,
) -> None:
    """Mask-and-score grid: generative models against classic imputers on the same masks.

    Writes results.json, results.md, score_vs_rate.png and calibration.png under --out."""
    from . import console
    from .evaluation import EvaluationInputError, results_table, run_evaluation

    console.configure(verbose)
    try:
        result = run_evaluation(
            data,
            models=split_items(models, ["jpvae", "tae"], "--models"),
            params=param or [],
            epochs=epochs,
            baselines=split_items(baselines, ["column-mean", "knn", "mice", "missforest"], "--baselines"),
            mechanisms=split_items(mechanisms, ["mcar", "view"], "--mechanisms"),
            rates=split_items(rates, [0.2, 0.5], "--rates", float),
            seeds=split_items(seeds, [0, 1, 2], "--seeds", int),
            n_samples=n_samples,
            label=label,
            out_dir=out,
            tracking_uri=tracking_uri,
            mlflow=mlflow,
            progress=progress,
        )
    except EvaluationInputError as err:
        raise typer.BadParameter(str(err)) from None
    typer.echo(results_table(result.rows))
    typer.echo(f"{len(result.rows)} fits in {result.wall_seconds:.1f} s; wrote {result.out_dir}/")
    if result.run_id is not None:
        typer.echo(f"MLflow run {result.run_id} at {result.tracking_uri}")


app.command(epilog=cli_tune.epilog())(cli_tune.tune)


def command(name: str):
    """One command as a click command (its options, help and checks are the `mvimpute <name>` ones)."""
    return typer.main.get_command(app).commands[name]


def run_command(name: str, prog_name: str, argv: list[str] | None = None) -> None:
    """Run one command as a program: the `jobs/*.py` wrappers (`python jobs/train.py --help`).
    Exits like a program; called with `argv` (tests), returns normally on success."""
    try:
        command(name).main(args=argv, prog_name=prog_name, **app.info.context_settings)
    except SystemExit as stop:
        if stop.code not in (0, None) or argv is None:
            raise


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
