# ruff: noqa: E501, E702, B905  (measurement scripts: kept as they were run)
"""JPVAE's count cap on and off on the same fitted model (synthetic-omics, the `evaluate` split, 50 % hidden).

Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/count_cap_check.py N SEEDS MECHANISM
     (N = 0: the default size, 1,000 samples), e.g. `... 0 0 view`, `... 0 0 mcar`, `... 40 0,1,2 view`.
The model is trained with `seed=seed`; the cap is switched off by setting the `count_cap_*` buffers to +inf.
"""

import math
import sys

import numpy as np
import torch

import mvimpute as mvi
from mvimpute.baselines import mean_imputer
from mvimpute.evaluation import hide

torch.set_num_threads(1)
n = int(sys.argv[1])
seeds = [int(s) for s in sys.argv[2].split(",")]
mech = sys.argv[3]
kw = {"n_samples": n} if n else {}
data = mvi.load_dataset("synthetic-omics", **kw)
n = data.n_samples
for seed in seeds:
    perm = np.random.default_rng(seed).permutation(n)
    nt = int(round(0.2 * n))
    train, test = data.subset(np.sort(perm[nt:])), data.subset(np.sort(perm[:nt]))
    ctr = hide(train, mech, 0.5, seed).data
    cte = hide(test, mech, 0.5, seed + 10000)
    mean_rmse = mvi.score(mean_imputer().fit(ctr), test, cte.data, n_samples=0)["rmse"]
    imp = mvi.MultiViewImputer("jpvae", epochs=100, progress=False, seed=seed).fit(ctr)
    cap = mvi.score(imp, test, cte.data, n_samples=100, eval_elbo_steps=0)
    caps = {k: v.clone() for k, v in imp.model_.state_dict().items() if k.startswith("count_cap")}
    for k in caps:
        getattr(imp.model_, k).fill_(math.inf)
    nocap = mvi.score(imp, test, cte.data, n_samples=100, eval_elbo_steps=0)
    keys = [k for k in cap if "/" not in k and any(s in k for s in ("rmse", "crps", "cover"))]
    print(
        n,
        mech,
        seed,
        "mean",
        round(mean_rmse, 3),
        "cap",
        {k: round(cap[k], 4) for k in keys},
        "nocap",
        {k: round(nocap[k], 4) for k in keys},
        flush=True,
    )
