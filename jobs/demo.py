"""The main job on embedded data: train JPVAE on digits-halves, save, reload, impute one sample.

One machine:
    make demo            # or: python jobs/demo.py --epochs 30
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import mvimpute as mvi


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30)
    args = p.parse_args(argv)

    data = mvi.load_dataset("digits-halves")
    train, test = data.split(0.2, seed=0)
    imp = mvi.MultiViewImputer("jpvae", prior="orthogonal", epochs=args.epochs, batch_size=32).fit(train)
    print(f"trained {imp!r} in {imp.fit_seconds_:.1f} s (best epoch {imp.best_epoch_})")
    with tempfile.TemporaryDirectory() as tmp:
        path = imp.save(Path(tmp) / "jpvae.pt")
        imp = mvi.MultiViewImputer.load(path)
    corrupted = mvi.masking.hide_view(test.subset([0]), "bottom").data
    filled = imp.transform(corrupted)
    draws = imp.sample(corrupted, n_samples=100)["bottom"][:, 0]
    truth = test.subset([0]).views["bottom"][0]
    print(f"test sample {test.index[0]} (label {int(test.obs['label'].iloc[0])}): bottom half hidden, imputed from top")
    print("pixel   truth  imputed   90% interval")
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    names, imputed = corrupted.columns["bottom"], filled.views["bottom"][0]
    for j in range(0, 32, 4):
        print(f"{names[j]:>5}  {truth[j]:6.2f}  {imputed[j]:7.2f}   [{lo[j]:.2f}, {hi[j]:.2f}]")
    s = mvi.score(imp, test, mvi.masking.hide_view(test, "bottom").data, n_samples=50)
    print(
        f"test split: RMSE {s['rmse']:.3f}, summed BCE of the bottom half {s['bce/bottom']:.2f}, "
        f"active units {100 * s['active_units']:.0f} %"
    )


if __name__ == "__main__":
    main()
