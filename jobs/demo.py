"""The main job on embedded data: train JPVAE on digits-halves through Ray Train, track the run
and register the model in MLflow, load it back through `mlflow.pyfunc`, impute one sample; then
serve the registered model (alias `champion`) with Ray Serve and impute a sample whose second view
is missing over HTTP.

One machine (local Ray, MLflow in ./mlflow.db + ./mlartifacts):
    make demo            # or: python jobs/demo.py --epochs 20
On a Ray cluster with an MLflow server:
    MLFLOW_TRACKING_URI=http://mlflow:5000 ray job submit --working-dir . -- python jobs/demo.py
"""

from __future__ import annotations

import argparse
import json
import urllib.request

import numpy as np

import mvimpute as mvi
from mvimpute import console, registry
from mvimpute.jobs.train import train_main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the endpoint (127.0.0.1)")
    p.add_argument("--no-serve", action="store_true", help="stop after the pyfunc imputation")
    args = p.parse_args(argv)
    console.configure(verbose=False)  # a line per epoch and a summary, as `mvimpute train` prints

    small = ["model_params.prior=orthogonal", "model_params.latent_dim=10", "model_params.hidden=[128,128]"]
    job = train_main(
        None,
        [*small, "train.batch_size=32", "train.patience=10", f"train.epochs={args.epochs}"],
        data="digits-halves",
        num_workers=args.num_workers,
    )
    model = registry.load_pyfunc(job.model_uri)

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
    if not args.no_serve:
        serve_and_impute(job.model_uri, data.subset([1]), args.port)


def serve_and_impute(model_uri: str, sample, port: int) -> None:
    """Point `champion` at the new version, serve it, POST one sample with its bottom half missing."""
    import ray
    from ray import serve

    from mvimpute.endpoint import build_app

    tracking_uri = registry.resolve_tracking_uri()
    name = registry.model_version(model_uri, tracking_uri)["name"]
    registry.set_alias(model_uri, registry.CHAMPION, tracking_uri)
    champion = f"models:/{name}@champion"
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"model_uri": champion, "tracking_uri": tracking_uri, "num_cpus": 0.5}), name="mvimpute")
        body = {
            "instances": [{"top": sample.views["top"][0].tolist(), "bottom": None}],
            "ids": [str(sample.index[0])],
            "return": ["mean", "interval"],
            "n_samples": 100,
            "level": 0.9,
        }
        url = f"http://127.0.0.1:{port}/impute"
        request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            reply = json.loads(r.read())
        pred = reply["predictions"][0]
        bottom, truth = np.array(pred["mean"]["bottom"]), sample.views["bottom"][0]
        lo, hi = np.array(pred["lower"]["bottom"]), np.array(pred["upper"]["bottom"])
        print(f"\nserved {champion} (version {reply['model']['version']}) at {url}")
        print(f"POST /impute, sample {pred['id']}: top half given, bottom half missing")
        print("truth   " + " ".join(f"{v:.1f}" for v in truth[8:24]))
        print("imputed " + " ".join(f"{v:.1f}" for v in bottom[8:24]))
        print(
            f"RMSE {np.sqrt(np.mean((bottom - truth) ** 2)):.3f}; 90 % intervals cover "
            f"{np.mean((truth >= lo) & (truth <= hi)):.0%} of the hidden pixels"
        )
    finally:
        serve.shutdown()
        print("Serve shut down")


if __name__ == "__main__":
    main()
