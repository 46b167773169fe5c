"""Mask-and-score evaluation of generative models against classic imputers.

One machine:
    python jobs/evaluate.py --data synthetic-omics --models jpvae tae --mechanisms mcar view --rates 0.2 0.5
    python jobs/evaluate.py --data digits-halves --label label --epochs 60
    mvimpute evaluate --data digits-halves --label label --epochs 60          # the same call
On a Ray cluster (the driver runs the grid; MLflow run on the cluster's tracking server):
    ray job submit --working-dir . -- python jobs/evaluate.py --data digits-halves --tracking-uri http://mlflow:5000
Writes results.json, results.md, score_vs_rate.png and calibration.png under --out; with a
tracking URI (--tracking-uri or MLFLOW_TRACKING_URI) or --mlflow, also one MLflow run.
"""

from __future__ import annotations

import argparse

from mvimpute.evaluation import MECHANISMS, EvaluationInputError, results_table, run_evaluation


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic-omics", help="embedded data set name or dataset spec YAML")
    p.add_argument("--models", nargs="*", default=["jpvae", "tae"], help="registry names")
    p.add_argument("--param", action="append", default=[], help="MODEL.key=value, e.g. tae.C=15")
    p.add_argument("--baselines", nargs="*", default=["column-mean", "knn", "mice", "missforest"])
    p.add_argument("--mechanisms", nargs="+", default=["mcar", "view"], choices=MECHANISMS)
    p.add_argument("--rates", type=float, nargs="+", default=[0.2, 0.5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--n-samples", type=int, default=100)
    p.add_argument("--label", default=None, help="obs column for downstream classification (digits: label)")
    p.add_argument("--out", default="outputs/evaluate")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (else MLFLOW_TRACKING_URI)")
    p.add_argument(
        "--mlflow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log one MLflow run (default: when a tracking URI is set)",
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    try:
        result = run_evaluation(
            args.data,
            models=args.models,
            params=args.param,
            epochs=args.epochs,
            baselines=args.baselines,
            mechanisms=args.mechanisms,
            rates=args.rates,
            seeds=args.seeds,
            n_samples=args.n_samples,
            label=args.label,
            out_dir=args.out,
            tracking_uri=args.tracking_uri,
            mlflow=args.mlflow,
            progress=args.progress,
        )
    except EvaluationInputError as err:
        p.error(str(err))
    print(results_table(result.rows))
    print(f"{len(result.rows)} fits in {result.wall_seconds:.1f} s; wrote {result.out_dir}/")
    if result.run_id is not None:
        print(f"MLflow run {result.run_id} at {result.tracking_uri}")


if __name__ == "__main__":
    main()
