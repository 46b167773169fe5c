"""Benchmarks behind the README tables.

One machine:
    python jobs/bench.py jpvae-priors --seeds 0 1 2 --epochs 60
    python jobs/bench.py fit-time --epochs 30
    python jobs/bench.py tae-baselines --seeds 0 1 2 --rates 0.5 0.8 --epochs 80 --threads 1
On a Ray cluster (runs on the head node's driver):
    ray job submit --working-dir . -- python jobs/bench.py jpvae-priors
"""

from __future__ import annotations

import argparse

import yaml

from mvimpute import benchmarks


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="bench", required=True)
    a = sub.add_parser("jpvae-priors", help="half-digit imputation BCE and active units per JPVAE prior")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--epochs", type=int, default=60)
    a.add_argument("--out", default="outputs/bench")
    f = sub.add_parser("fit-time", help="wall time of MultiViewImputer(model='jpvae').fit on digits-halves")
    f.add_argument("--epochs", type=int, default=30)
    f.add_argument("--repeats", type=int, default=3)
    f.add_argument("--out", default="outputs/bench")
    t = sub.add_parser("tae-baselines", help="TAE vs MVAE vs MIWAE on noisy, incomplete digits (evaluation ELBO)")
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    t.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.8], help="shares of pixels missing (MCAR)")
    t.add_argument("--epochs", type=int, default=80)
    t.add_argument("--noise-std", type=float, default=0.1)
    t.add_argument("--eval-elbo-steps", type=int, default=1000)
    t.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (1 helps on a shared machine)")
    t.add_argument("--models", nargs="+", default=["mvae", "miwae", "tae"])
    t.add_argument(
        "--tae",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="TAE settings replacing the chosen ones (all of them: noise, noise_std, warmup_*, C, lam)",
    )
    t.add_argument("--name", default="tae_baselines", help="file name of the JSON/Markdown outputs")
    t.add_argument("--out", default="outputs/bench")
    t.add_argument("--figure", default="docs/img/tae_digits.png")
    args = p.parse_args(argv)
    if args.bench == "jpvae-priors":
        benchmarks.jpvae_priors(seeds=tuple(args.seeds), epochs=args.epochs, out_dir=args.out, progress=False)
    elif args.bench == "fit-time":
        benchmarks.fit_time(epochs=args.epochs, repeats=args.repeats, out_dir=args.out)
    elif args.bench == "tae-baselines":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        tae = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.tae)} or None
        benchmarks.tae_vs_baselines(
            seeds=tuple(args.seeds),
            models=tuple(args.models),
            tae=tae,
            name=args.name,
            rates=tuple(args.rates),
            epochs=args.epochs,
            noise_std=args.noise_std,
            eval_elbo_steps=args.eval_elbo_steps,
            out_dir=args.out,
            figure=args.figure or None,
        )


if __name__ == "__main__":
    main()
