"""The batch imputation job: a wide Parquet table in, the imputed table out (Ray Data actor pool).

One machine (local Ray; the model from the MLflow registry, or a checkpoint):
    python jobs/impute.py --model-uri models:/mvimpute-jpvae@champion --input in.parquet --output out.parquet \
        --id-column sample_id --return std,interval --n-samples 100
    python jobs/impute.py --checkpoint model.pt --input in.parquet --output out.parquet
On a Ray cluster with an MLflow server (GPUs when the cluster has them):
    MLFLOW_TRACKING_URI=http://mlflow:5000 ray job submit --working-dir . -- \
        python jobs/impute.py --input /data/in.parquet --output /data/out.parquet --num-workers 4 --use-gpu

The same call as `mvimpute impute` (mvimpute.jobs.impute.impute_table).
"""

from __future__ import annotations

import typer

from mvimpute.cli_serving import impute

if __name__ == "__main__":
    typer.run(impute)
