"""Train a model with Ray Train and keep the run and the model in MLflow — `mvimpute train`.

The same command and options as `mvimpute train` (see `python jobs/train.py --help`): a config
YAML plus `key.path=value` overrides; prints one line per epoch and a summary (best epoch and
score, MLflow run id, model URI `models:/mvimpute-<model>@champion`).

One machine (a local Ray session, MLflow in ./mlflow.db + ./mlartifacts):
    python jobs/train.py --data digits-halves --epochs 20
    python jobs/train.py --config jobs/train.yaml --data my_spec.yaml --num-workers 2 --model tae -p C=10

A Ray cluster (MLflow server reachable from every node; storage shared by the nodes):
    RAY_ADDRESS=http://head:8265 ray job submit --working-dir . -- \
        env MLFLOW_TRACKING_URI=http://mlflow:5000 python jobs/train.py --config jobs/train.yaml \
        --num-workers 4 --use-gpu cluster.storage_path=s3://bucket/ray_results
"""

from mvimpute.cli import run_command


def main(argv: list[str] | None = None) -> None:
    run_command("train", "python jobs/train.py", argv)


if __name__ == "__main__":
    main()
