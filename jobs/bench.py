"""Benchmarks behind the README tables.

One machine:
    python jobs/bench.py jpvae-priors --seeds 0 1 2 --epochs 60
    python jobs/bench.py fit-time --epochs 30
On a Ray cluster (runs on the head node's driver):
    ray job submit --working-dir . -- python jobs/bench.py jpvae-priors
"""

from __future__ import annotations

import argparse

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
    args = p.parse_args(argv)
    if args.bench == "jpvae-priors":
        benchmarks.jpvae_priors(seeds=tuple(args.seeds), epochs=args.epochs, out_dir=args.out, progress=False)
    elif args.bench == "fit-time":
        benchmarks.fit_time(epochs=args.epochs, repeats=args.repeats, out_dir=args.out)


if __name__ == "__main__":
    main()
