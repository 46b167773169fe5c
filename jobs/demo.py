"""The main job on embedded data: train JPVAE on digits-halves through Ray Train, track the run
and register the model in MLflow, load it back through `mlflow.pyfunc`, impute one sample.

One machine (local Ray, MLflow in ./mlflow.db + ./mlartifacts):
    make demo            # or: python jobs/demo.py --epochs 20
On a Ray cluster with an MLflow server:
    MLFLOW_TRACKING_URI=http://mlflow:5000 ray job submit --working-dir . -- python jobs/demo.py
"""

from __future__ import annotations

import argparse

import numpy as np

import mvimpute as mvi
from mvimpute import console, tracking
from mvimpute.distributed import train_main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--num-workers", type=int, default=1)
    args = p.parse_args(argv)
    console.configure(verbose=False)  # a line per epoch and a summary, as `mvimpute train` prints

    small = ["model_params.prior=orthogonal", "model_params.latent_dim=10", "model_params.hidden=[128,128]"]
    job = train_main(
        None,
        [*small, "train.batch_size=32", "train.patience=10", f"train.epochs={args.epochs}"],
        data="digits-halves",
        num_workers=args.num_workers,
    )
    model = tracking.load_pyfunc(job.model_uri)

    data = mvi.load_dataset("digits-halves")
    sample = data.subset([0])
    given = mvi.masking.hide_view(sample, "bottom").data
    frame = given.to_frame()
    filled = model.predict(frame)
    truth = sample.views["bottom"][0]
    imputed = filled[[f"bottom:{c}" for c in sample.columns["bottom"]]].to_numpy()[0]
    print(f"\nregistered model {job.model_uri} (run {job.run_id}), loaded through mlflow.pyfunc")
    print(
        f"sample {sample.index[0]} (digit {int(sample.obs['label'].iloc[0])}): bottom half hidden, imputed from the top"
    )
    print("truth   " + " ".join(f"{v:.1f}" for v in truth[8:24]))
    print("imputed " + " ".join(f"{v:.1f}" for v in imputed[8:24]))
    print(f"RMSE over the hidden half: {np.sqrt(np.mean((imputed - truth) ** 2)):.3f}")


if __name__ == "__main__":
    main()
