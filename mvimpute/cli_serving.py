"""The `mvimpute impute` and `mvimpute serve` commands (registered in `mvimpute.cli`).

    mvimpute impute --model-uri models:/mvimpute-jpvae@champion --input in.parquet --output out.parquet \\
        --id-column sample_id --return std,interval --n-samples 100
    mvimpute impute --checkpoint model.pt --input in.csv --output out.csv --engine local
    mvimpute serve --model-uri models:/mvimpute-jpvae@champion      # HTTP on 127.0.0.1:8000
"""

from __future__ import annotations

import os
import signal
import time
from typing import Annotated

import typer

from .cli_options import local_path_exists
from .names import DEFAULT_MODEL_URI, MODEL_URI_ENV

RETURNS = ("mean", "std", "interval", "samples")

ModelUri = Annotated[
    str | None,
    typer.Option(
        "--model-uri",
        help=f"MLflow model URI (else ${MODEL_URI_ENV}, else {DEFAULT_MODEL_URI}).",
        show_default=False,
    ),
]
Checkpoint = Annotated[
    str | None,
    typer.Option(
        "--checkpoint", "--model-path", callback=local_path_exists,
        help="A checkpoint (a file, a folder holding model.pt, or s3://…) instead of a registered model.",
    ),
]  # fmt: skip
TrackingUri = Annotated[
    str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (else $MLFLOW_TRACKING_URI).")
]


def _returns(values: list[str] | None) -> list[str]:
    out = []
    for item in (x.strip() for v in values or [] for x in v.split(",")):
        if not item:
            continue
        if item not in RETURNS:
            raise typer.BadParameter(f"{item!r}; choose from {', '.join(RETURNS)}", param_hint="--return")
        out.append(item)
    return out or ["mean"]


def impute(
    input_path: Annotated[
        str,
        typer.Option(
            "--input",
            help="Wide table, a path or URI (s3://...): Parquet file or folder, or CSV; columns `view:feature`.",
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            help="Where to write it: a .parquet/.csv file, or a folder or URI (Parquet parts + _SUCCESS manifest)."
        ),
    ],
    model_uri: ModelUri = None,
    checkpoint: Checkpoint = None,
    tracking_uri: TrackingUri = None,
    id_column: Annotated[str | None, typer.Option(help="A column of sample ids to carry through.")] = None,
    returns: Annotated[
        list[str] | None,
        typer.Option(
            "--return", help="Also write std, interval (__lower/__upper), samples (__draws).", show_default="mean"
        ),
    ] = None,
    n_samples: Annotated[int, typer.Option(min=2, help="Posterior draws for std, interval and samples.")] = 100,
    level: Annotated[float, typer.Option(min=0.0, max=1.0, help="Coverage of the central interval.")] = 0.9,
    num_workers: Annotated[int, typer.Option(min=1, help="Ray Data actors imputing batches.")] = 1,
    use_gpu: Annotated[bool, typer.Option("--use-gpu/--no-gpu", help="One GPU per actor.")] = False,
    engine: Annotated[str, typer.Option(help="ray (Ray Data actor pool) or local (this process).")] = "ray",
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per batch.")] = 4096,
    device: Annotated[str, typer.Option(hidden=True, help="Kept for old scripts; the engine picks the device.")] = "",
    monitor_rows: Annotated[
        int, typer.Option(min=0, help="First rows the monitoring summary (drift, calibration) covers; 0: none.")
    ] = 1000,
) -> None:
    """Fill the missing entries of a wide table; every row, its id, the order and observed values are kept."""
    from .jobs.impute import impute_table
    from .predictor import InputError

    if checkpoint is not None and model_uri is not None:
        raise typer.BadParameter("give --checkpoint or --model-uri, not both", param_hint="--model-uri")
    if engine not in ("ray", "local"):
        raise typer.BadParameter(f"{engine!r}; use ray or local", param_hint="--engine")
    try:
        result = impute_table(
            input_path,
            output,
            checkpoint=checkpoint,
            model_uri=model_uri,
            tracking_uri=tracking_uri,
            id_column=id_column,
            outputs=_returns(returns),
            n_samples=n_samples,
            level=level,
            num_workers=num_workers,
            use_gpu=use_gpu,
            batch_size=batch_size,
            engine=engine,
            monitor_rows=monitor_rows,
        )
    except InputError as err:
        where = {"input": "--input", "output": "--output"}.get(str(err.loc[0]) if err.loc else "", None)
        if id_column is not None and err.loc == (id_column,) and "id column" in err.message:
            where = "--id-column"
        raise typer.BadParameter(f"{err.message} (in {str(input_path)!r})", param_hint=where or "--input") from None
    except ValueError as err:  # bad values inside the table, a model that cannot be loaded
        raise typer.BadParameter(
            f"{str(input_path)!r}: {str(err).strip().splitlines()[-1]}", param_hint="--input"
        ) from None
    typer.echo(
        f"imputed {result.missing_filled} missing entries in {result.rows} rows → {output} "
        f"({result.seconds:.1f} s, model {result.model.get('model_uri') or result.model.get('checkpoint')})"
    )
    if result.monitoring is not None:
        states = ", ".join(f"{v} {s['state']}" for v, s in result.monitoring["views"].items())
        typer.echo(f"monitoring summary → {result.monitoring_path} ({states})")


def serve_command(
    model_uri: ModelUri = None,
    checkpoint: Checkpoint = None,
    tracking_uri: TrackingUri = None,
    host: Annotated[str, typer.Option(help="HTTP host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    max_batch_size: Annotated[int, typer.Option(min=1, help="@serve.batch size (1: no batching).")] = 32,
    max_n_samples: Annotated[int, typer.Option(min=2, help="Cap on n_samples per request.")] = 1000,
    num_cpus: Annotated[float, typer.Option(help="CPUs per replica.")] = 1.0,
    use_gpu: Annotated[bool, typer.Option("--use-gpu/--no-gpu", help="One GPU per replica.")] = False,
    max_replicas: Annotated[int, typer.Option(min=1, help="Autoscaling ceiling.")] = 2,
    reload_interval_s: Annotated[float, typer.Option(help="Registry poll for a moved alias (0: never).")] = 30.0,
    monitor_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of requests scored for GET /monitoring (0: off).")
    ] = 0.05,
) -> None:
    """Serve the model over HTTP (Ray Serve): POST /impute, GET /healthz, GET /metadata, /docs."""
    if checkpoint is not None and model_uri is not None:
        raise typer.BadParameter("give --checkpoint or --model-uri, not both", param_hint="--model-uri")
    import ray
    from ray import serve

    from .endpoint import build_app

    args = {
        "model_uri": model_uri,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "tracking_uri": tracking_uri,
        "max_batch_size": max_batch_size,
        "max_n_samples": max_n_samples,
        "num_cpus": num_cpus,
        "num_gpus": 1.0 if use_gpu else 0.0,
        "max_replicas": max_replicas,
        "reload_interval_s": reload_interval_s,
        "monitor_share": monitor_share,
    }
    app_ = build_app(args)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), runtime_env={"env_vars": _forwarded_env()})
    serve.start(http_options={"host": host, "port": port})
    serve.run(app_, name="mvimpute", route_prefix="/")
    typer.echo(
        f"serving on http://{host}:{port}  (POST /impute, GET /healthz, GET /metadata, GET /monitoring, /docs); "
        "Ctrl-C stops"
    )

    def _stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        typer.echo("Serve shut down")


def _forwarded_env() -> dict:
    """What the replicas need from here: the tracking and model URIs."""
    return {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", MODEL_URI_ENV) if k in os.environ}
