# ruff: noqa: E501  (measurement script)
"""JPVAE on MNIST-5k halves with the library defaults (`bounded` pixels, conformal intervals) against the
paper protocol's `bernoulli` views (docs/uncertainty.md, "MNIST-5k"): the jpvae-priors split and budget
(test split 0.2 per seed, up to 30 epochs, orthogonal prior), one half hidden and imputed from the other.
Prints RMSE, CRPS and 90 % coverage of 100 draws on the hidden half, per seed and likelihood, and the
column mean's and KNN's RMSE.
Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/mnist_jpvae.py 0,1,2   (needs mvimpute[bench])
"""

import json
import sys
import time

import numpy as np
import torch

from mvimpute import masking
from mvimpute.baselines import knn_imputer, mean_imputer
from mvimpute.data.mnist import mnist_5k
from mvimpute.data.multiview import as_multiview
from mvimpute.imputer import MultiViewImputer
from mvimpute.scoring import score

torch.set_num_threads(1)
seeds = [int(s) for s in sys.argv[1].split(",")]
raw = mnist_5k("halves")
rows = []
for seed in seeds:
    for lik in ("bernoulli", "bounded"):
        data = as_multiview(raw, {"top": lik, "bottom": lik})
        train, test = data.split(0.2, seed=seed)
        t0 = time.perf_counter()
        imp = MultiViewImputer("jpvae", prior="orthogonal", epochs=30, seed=seed, progress=False).fit(train)
        fit_s = time.perf_counter() - t0
        for hidden in ("top", "bottom"):
            s = score(imp, test, masking.hide_view(test, hidden).data, n_samples=100)
            row = {"seed": seed, "likelihood": lik, "hidden": hidden, "fit_s": round(fit_s, 1),
                   **{k: round(s[k], 4) for k in ("rmse", "crps", "coverage_90", "coverage_50", "width_90")}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    train, test = raw.split(0.2, seed=seed)
    for name, make in (("column-mean", mean_imputer), ("knn", knn_imputer)):
        base = make().fit(train)
        for hidden in ("top", "bottom"):
            s = score(base, test, masking.hide_view(test, hidden).data, n_samples=0)
            row = {"seed": seed, "likelihood": name, "hidden": hidden, "rmse": round(s["rmse"], 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
print("\n| method | hidden | RMSE | CRPS | 90 % coverage |\n|---|---|---|---|---|")
for lik in ("bernoulli", "bounded", "column-mean", "knn"):
    for hidden in ("top", "bottom"):
        sel = [r for r in rows if r["likelihood"] == lik and r["hidden"] == hidden]
        cell = [f"{np.mean([r[k] for r in sel]):.3f} ± {np.std([r[k] for r in sel], ddof=1) if len(sel) > 1 else 0:.3f}" if k in sel[0] else "–" for k in ("rmse", "crps", "coverage_90")]
        print(f"| {lik} | {hidden} | " + " | ".join(cell) + " |")
