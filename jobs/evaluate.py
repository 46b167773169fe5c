"""Mask-and-score evaluation of generative models against classic imputers — `mvimpute evaluate`.

The same command and options as `mvimpute evaluate` (see `python jobs/evaluate.py --help`).

One machine:
    python jobs/evaluate.py --data synthetic-omics --models jpvae,tae --mechanisms mcar,view --rates 0.2,0.5
    python jobs/evaluate.py --data digits-halves --label label --epochs 60
On a Ray cluster (the driver runs the grid; MLflow run on the cluster's tracking server):
    ray job submit --working-dir . -- python jobs/evaluate.py --data digits-halves --tracking-uri http://mlflow:5000
Writes results.json, results.md, score_vs_rate.png and calibration.png under --out; with a
tracking URI (--tracking-uri or MLFLOW_TRACKING_URI) or --mlflow, also one MLflow run.
"""

from mvimpute.cli import run_command


def main(argv: list[str] | None = None) -> None:
    run_command("evaluate", "python jobs/evaluate.py", argv)


if __name__ == "__main__":
    main()
