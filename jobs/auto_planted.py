"""`auto` on the planted noisy manifold of tests/test_auto.py (docs/auto.md, "The CRPS of few draws"):
each candidate's final validation score with the draws of the ranking (`training.RANK_SAMPLES`) and
with `--val-samples` only (what the first version ranked on), beside its CRPS on held-out rows.

    OMP_NUM_THREADS=1 python jobs/auto_planted.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python jobs/auto_planted.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--val-samples", type=int, default=10, help="the draws that select epochs (the test's)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import torch
    from test_auto import FAST, held_out_crps, noisy_manifold_views

    import mvimpute as mvi
    from mvimpute import training

    torch.set_num_threads(1)
    candidates = {"mean": {}, "knn": {}, "mice": {"n_nearest_features": 20, "n_iter": 5, "sweeps": 5}, "jpvae": {}}
    for seed in args.seeds:
        train, test = noisy_manifold_views(seed=seed).split(0.25, 0)
        for name, params in candidates.items():
            imp = mvi.MultiViewImputer(name, **params, **{**FAST, "epochs": 40, "val_samples": args.val_samples})
            imp.fit(train)
            ranked = training.final_validation_score(imp.model_, imp.validation_set_, imp.train_config)["val_crps"]
            few = training.validation_score(imp.model_, imp.validation_set_, args.val_samples)["val_crps"]
            print(
                f"seed {seed} {name:6s} validation CRPS, {args.val_samples} draws {few:.4f}, "
                f"{max(args.val_samples, training.RANK_SAMPLES)} draws {ranked:.4f}; held-out CRPS "
                f"{held_out_crps(imp, test):.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
