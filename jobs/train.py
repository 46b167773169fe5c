"""Train a model with Ray Train and keep the run and the model in MLflow.

A config YAML (see jobs/train.yaml) plus `key.path=value` overrides; prints the MLflow run id
and the registered model URI.

One machine (a local Ray session, MLflow in ./mlruns.db + ./mlartifacts):
    python jobs/train.py --config jobs/train.yaml --data digits-halves train.epochs=20
    python jobs/train.py --data my_spec.yaml --num-workers 2 model=tae model_params.C=10

A Ray cluster (MLflow server reachable from every node; storage shared by the nodes):
    RAY_ADDRESS=http://head:8265 ray job submit --working-dir . -- \
        env MLFLOW_TRACKING_URI=http://mlflow:5000 python jobs/train.py --config jobs/train.yaml \
        --num-workers 4 --use-gpu cluster.storage_path=s3://bucket/ray_results
"""

from __future__ import annotations

import argparse

from mvimpute.distributed import train_main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides, key.path=value (value parsed as YAML)")
    p.add_argument("--config", help="job config YAML (data, model, model_params, train, cluster, mlflow)")
    p.add_argument("--data", help="a dataset spec YAML or an embedded data set (digits-halves, synthetic-omics)")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (DDP)")
    p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker")
    p.add_argument("--run-name", help="the Ray Train run's name; the name of a stopped run resumes it")
    p.add_argument("--resume-from", help="a checkpoint (file or directory) to continue from")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.add_argument("--registered-model-name", help="register the model under this name (default mvimpute-<model>)")
    p.add_argument("--no-tracking", action="store_true", help="train without MLflow")
    args = p.parse_args(argv)
    train_main(
        args.config,
        args.overrides,
        data=args.data,
        num_workers=args.num_workers,
        use_gpu=args.use_gpu,
        run_name=args.run_name,
        resume_from=args.resume_from,
        tracking_uri=args.tracking_uri,
        registered_model_name=args.registered_model_name,
        tracking=False if args.no_tracking else None,
    )


if __name__ == "__main__":
    main()
