"""The `mvimpute` command line: list data sets, fit a model, score it, impute a table, evaluate a grid.

    mvimpute datasets
    mvimpute fit --dataset digits-halves --model jpvae --epochs 50 --out model.pt --param hidden=[256,256]
    mvimpute score --model-path model.pt --dataset digits-halves --mechanism view --rate 0.5 --json scores.json
    mvimpute impute --checkpoint model.pt --input in.parquet --output out.parquet --id-column sample_id
    mvimpute serve --model-uri models:/mvimpute-jpvae@champion
    mvimpute train --config jobs/train.yaml --data digits-halves --num-workers 2 train.epochs=20
    mvimpute evaluate --data digits-halves --label label --models jpvae,tae --tracking-uri sqlite:///mlruns.db

`fit` trains on the training part of a seeded split and `score` scores on its test part: keep
`--test-frac` and `--split-seed` the same for both so that no training sample is scored.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
import yaml

from . import masking
from .cli_serving import impute, serve_command
from .data import DATASETS, MultiViewData, load_dataset
from .evaluation import EvaluationInputError, results_table, run_evaluation
from .imputer import MultiViewImputer
from .models import MODEL_REGISTRY
from .scoring import score as score_imputer

app = typer.Typer(
    name="mvimpute",
    help="Multi-view imputation with honest uncertainty (TAE, JPVAE).",
    no_args_is_help=True,
    add_completion=False,
)

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class Mechanism(str, Enum):
    view = "view"
    mcar = "mcar"
    mar = "mar"


# ----------------------------------------------------------------------------- helpers


def parse_params(raw: list[str] | None, reserved: dict[str, str] | None = None) -> dict:
    """`key=value` pairs; values are YAML scalars or flow lists (`hidden=[64,64]`, `alpha=0.9`)."""
    reserved = reserved or {}
    params: dict = {}
    for item in raw or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not key=value", param_hint="--param")
        if key in params:
            raise typer.BadParameter(f"{key!r} is given twice", param_hint="--param")
        if key in reserved:
            raise typer.BadParameter(f"{key!r} has its own option: use {reserved[key]}", param_hint="--param")
        try:
            params[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as err:
            raise typer.BadParameter(f"{key!r}: cannot parse {value!r} ({err})", param_hint="--param") from None
    return params


def get_dataset(name: str) -> MultiViewData:
    if name not in DATASETS:
        raise typer.BadParameter(
            f"unknown dataset {name!r}; embedded data sets are {list(DATASETS)}", param_hint="--dataset"
        )
    return load_dataset(name)


def load_imputer(path: Path, device: str) -> MultiViewImputer:
    try:
        return MultiViewImputer.load(path, device=device)
    except Exception as err:  # a file that is not a checkpoint fails in torch.load in many ways
        raise typer.BadParameter(f"cannot load a model from {str(path)!r}: {err}", param_hint="--model-path") from None


def table_format(path: Path, option: str) -> str:
    fmt = TABLE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise typer.BadParameter(
            f"{str(path)!r}: use a file ending in one of {sorted(TABLE_SUFFIXES)}", param_hint=option
        )
    return fmt


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    for name in DATASETS:
        data = load_dataset(name)
        typer.echo(f"{name}  ({data.n_samples} samples)")
        width = max(len(v) for v in data.view_names)
        for v in data.view_names:
            typer.echo(f"  {v.ljust(width)}  {data.dims[v]:>5}  {data.likelihoods[v]}")


@app.command()
def fit(
    dataset: Annotated[str, typer.Option(help=f"An embedded data set: {', '.join(DATASETS)}.")],
    out: Annotated[Path, typer.Option(help="Where to write the checkpoint (.pt).", dir_okay=False)],
    model: Annotated[str, typer.Option(help=f"One of {', '.join(sorted(MODEL_REGISTRY))}.")] = "jpvae",
    epochs: Annotated[int, typer.Option(min=1)] = 100,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Model or training parameter key=value (YAML value).")
    ] = None,
    test_frac: Annotated[float, typer.Option(min=0.0, max=0.95, help="Share held out for `score` (0: none).")] = 0.2,
    split_seed: Annotated[int, typer.Option(help="Seed of the train/test split (use the same in `score`).")] = 0,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = False,
) -> None:
    """Train a model on the training split of a data set and save it."""
    if model not in MODEL_REGISTRY:
        raise typer.BadParameter(
            f"unknown model {model!r}; choose one of {sorted(MODEL_REGISTRY)}", param_hint="--model"
        )
    params = parse_params(
        param, {"epochs": "--epochs", "seed": "--seed", "device": "--device", "progress": "--progress"}
    )
    data = get_dataset(dataset)
    train = data.split(test_frac, split_seed)[0] if test_frac > 0 else data
    try:
        imp = MultiViewImputer(model, epochs=epochs, seed=seed, device=device, progress=progress, **params)
    except (ValueError, TypeError) as err:
        raise typer.BadParameter(str(err), param_hint="--param") from None
    imp.fit(train)
    best = next((h for h in imp.history_ if h.get("epoch") == getattr(imp, "best_epoch_", None)), None)
    key = "val_rmse" if best is not None and "val_rmse" in best else "train_loss"
    best_score = math.nan if best is None else best.get(key, math.nan)
    typer.echo(
        f"fitted {model} on {train.n_samples} samples of {dataset} in {imp.fit_seconds_:.2f} s "
        f"({len(imp.history_)} epochs)"
    )
    typer.echo(f"best validation score: {key} = {best_score:.4g} at epoch {imp.best_epoch_}")
    path = imp.save(out)
    typer.echo(f"saved {path}")


@app.command()
def score(
    model_path: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="A checkpoint from `fit`.")],
    dataset: Annotated[str, typer.Option(help=f"An embedded data set: {', '.join(DATASETS)}.")],
    mechanism: Annotated[
        Mechanism, typer.Option(help="Hide whole views, MCAR entries or MAR entries.")
    ] = Mechanism.view,
    rate: Annotated[float, typer.Option(help="Share to hide, in [0, 1).")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the masking.")] = 0,
    test_frac: Annotated[float, typer.Option(min=0.0, max=0.95, help="As in `fit` (0: score on all samples).")] = 0.2,
    split_seed: Annotated[int, typer.Option(help="As in `fit`.")] = 0,
    n_samples: Annotated[int, typer.Option(min=0, help="Draws for intervals and CRPS (0: point metrics only).")] = 100,
    json_out: Annotated[Path | None, typer.Option("--json", dir_okay=False, help="Also write the scores here.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
) -> None:
    """Hide entries of the test split, impute them, and score against the truth."""
    data = get_dataset(dataset)
    imp = load_imputer(model_path, device)
    test = data.split(test_frac, split_seed)[1] if test_frac > 0 else data
    hide = {Mechanism.view: masking.drop_views, Mechanism.mcar: masking.mcar, Mechanism.mar: masking.mar}
    try:
        corrupted = hide[mechanism](test, rate, seed=seed)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--rate") from None
    try:
        metrics = score_imputer(imp, corrupted.truth, corrupted.data, n_samples=n_samples)
    except ValueError as err:
        raise typer.BadParameter(
            f"cannot score {str(model_path)!r} on {dataset!r}: {err}", param_hint="--dataset"
        ) from None
    typer.echo(
        f"{imp.model_name} on {dataset}: {test.n_samples} test samples, mechanism {mechanism.value}, "
        f"rate {rate}, {int(metrics['n_hidden'])} hidden entries"
    )
    typer.echo(metrics_table(metrics, test.view_names))
    if json_out is not None:
        report = {
            "model_path": str(model_path),
            "model": imp.model_name,
            "dataset": dataset,
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


@app.command()
def train(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Config overrides, key.path=value (YAML values).")
    ] = None,
    config: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Job config YAML.")] = None,
    data: Annotated[str | None, typer.Option(help="A dataset spec YAML or an embedded data set name.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="Ray Train workers (DDP).")] = None,
    use_gpu: Annotated[bool | None, typer.Option("--use-gpu/--no-gpu", help="One GPU per worker.")] = None,
    run_name: Annotated[str | None, typer.Option(help="Ray Train run name; a stopped run's name resumes it.")] = None,
    resume_from: Annotated[str | None, typer.Option(help="A checkpoint (file or directory) to continue from.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    registered_model_name: Annotated[str | None, typer.Option(help="Registered model name.")] = None,
) -> None:
    """Train on a Ray cluster (or local Ray) with Ray Train; track the run and register the model in MLflow."""
    from .distributed import train_main

    try:
        train_main(
            config,
            overrides or (),
            data=data,
            num_workers=num_workers,
            use_gpu=use_gpu,
            run_name=run_name,
            resume_from=resume_from,
            tracking_uri=tracking_uri,
            registered_model_name=registered_model_name,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


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
    data: Annotated[
        str, typer.Option(help=f"An embedded data set ({', '.join(DATASETS)}) or a dataset spec YAML.")
    ] = "synthetic-omics",
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            "--model",
            help=f"Models ({', '.join(sorted(MODEL_REGISTRY))}); comma-separated or repeated; '' for none.",
            show_default="jpvae,tae",
        ),
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="MODEL.key=value (YAML value), e.g. tae.C=15.")
    ] = None,
    baselines: Annotated[
        list[str] | None,
        typer.Option(
            help="Classic imputers; comma-separated or repeated; '' for none.",
            show_default="column-mean,knn,mice,missforest",
        ),
    ] = None,
    mechanisms: Annotated[
        list[str] | None, typer.Option("--mechanisms", "--mechanism", help="mcar, view, mar.", show_default="mcar,view")
    ] = None,
    rates: Annotated[list[str] | None, typer.Option(help="Shares to hide.", show_default="0.2,0.5")] = None,
    seeds: Annotated[list[str] | None, typer.Option(help="Seeds of split and masks.", show_default="0,1,2")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of every model (a --param can override).")] = 100,
    n_samples: Annotated[int, typer.Option(min=1, help="Posterior draws for intervals and CRPS.")] = 100,
    label: Annotated[str | None, typer.Option(help="Obs column for downstream accuracy (digits: label).")] = None,
    out: Annotated[Path, typer.Option(file_okay=False, help="Output folder.")] = Path("outputs/evaluate"),
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (else MLFLOW_TRACKING_URI).")] = None,
    mlflow: Annotated[
        bool | None,
        typer.Option("--mlflow/--no-mlflow", help="Log one MLflow run.", show_default="when a tracking URI is set"),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Mask-and-score grid: generative models against classic imputers on the same masks.

    Writes results.json, results.md, score_vs_rate.png and calibration.png under --out."""
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


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
