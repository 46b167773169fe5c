"""Mask-and-score evaluation of generative models against classic imputers.

One machine:
    python jobs/evaluate.py --data synthetic-omics --models jpvae tae --mechanisms mcar view --rates 0.2 0.5
    python jobs/evaluate.py --data digits-halves --label label --epochs 60
On a Ray cluster (the driver runs the grid):
    ray job submit --working-dir . -- python jobs/evaluate.py --data digits-halves
Writes results.json, results.md, score_vs_rate.png and calibration.png under --out.
"""

from __future__ import annotations

import argparse

import yaml

from mvimpute.data import load_dataset
from mvimpute.evaluation import MECHANISMS, evaluate


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic-omics", help="embedded data set name")
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
    args = p.parse_args(argv)
    models = {m: {"model": m, "epochs": args.epochs} for m in args.models}
    for item in args.param:
        key, _, value = item.partition("=")
        model, _, name = key.partition(".")
        if model not in models or not name or not _:
            p.error(f"--param {item!r}: expected MODEL.key=value with MODEL in {list(models)}")
        models[model][name] = yaml.safe_load(value)
    evaluate(
        load_dataset(args.data),
        models,
        baselines=tuple(args.baselines),
        mechanisms=tuple(args.mechanisms),
        rates=tuple(args.rates),
        seeds=tuple(args.seeds),
        n_samples=args.n_samples,
        label=args.label,
        out_dir=args.out,
    )


if __name__ == "__main__":
    main()
