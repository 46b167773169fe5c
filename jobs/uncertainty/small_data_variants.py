# ruff: noqa: E501, B023, B905, E402, E702, B007  (measurement scripts: kept as they were run)
"""JPVAE variants at small n on synthetic-omics (3 seeds, a view hidden with p = 0.5): RMSE overall and per view.

Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/small_data_variants.py jpvae 40 '[{"kl_weight": 4.0}, {"latent_dim": 1}]'
"""

import json
import sys

import numpy as np
import torch

import mvimpute as mvi
from mvimpute.baselines import mean_imputer
from mvimpute.evaluation import hide

torch.set_num_threads(1)
model = sys.argv[1]
n = int(sys.argv[2])
variants = json.loads(sys.argv[3])
data = mvi.load_dataset("synthetic-omics", n_samples=n)
res = {}
for seed in (0, 1, 2):
    perm = np.random.default_rng(seed).permutation(n)
    nt = int(round(0.2 * n))
    train, test = data.subset(np.sort(perm[nt:])), data.subset(np.sort(perm[:nt]))
    ctr = hide(train, "view", 0.5, seed).data
    cte = hide(test, "view", 0.5, seed + 10000)
    res.setdefault("mean", []).append(mvi.score(mean_imputer().fit(ctr), test, cte.data, n_samples=0)["rmse"])
    for i, kw in enumerate(variants):
        imp = mvi.MultiViewImputer(model, epochs=100, progress=False, seed=seed, **kw).fit(ctr)
        r = mvi.score(imp, test, cte.data, n_samples=0, eval_elbo_steps=0)
        res.setdefault(json.dumps(kw), []).append(r["rmse"])
        res.setdefault(json.dumps(kw) + " per-view", []).append(
            {k: round(v, 3) for k, v in r.items() if k.startswith("rmse/")}
        )
for k, v in res.items():
    print(n, model, k, f"{np.mean(v):.3f}±{np.std(v):.3f}" if not isinstance(v[0], dict) else v, flush=True)
print(
    n,
    "mean per-view",
    [
        mvi.score(
            mean_imputer().fit(hide(data, "view", 0.5, 0).data), data, hide(data, "view", 0.5, 1).data, n_samples=0
        )
    ],
)
