# ruff: noqa: E501, B023, B905, E402  (measurement scripts: kept as they were run)
"""JPVAE, MVAE, TAE on synthetic-omics at n = 40: the size rule against the n >= 1000 defaults (3 seeds, a view hidden with p = 0.5).

Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/small_data_rule.py jpvae,mvae,tae
"""

import sys

import numpy as np
import torch

import mvimpute as mvi
from mvimpute.baselines import mean_imputer
from mvimpute.evaluation import hide

torch.set_num_threads(1)
OLD = {
    "jpvae": dict(hidden=(512, 512), latent_dim=20, batch_size=64, weight_decay=0.0, patience=20, val_frac=0.1),
    "mvae": dict(hidden=400, latent_dim=20, batch_size=64, weight_decay=0.0, patience=20, val_frac=0.1),
    "tae": dict(
        hidden=400,
        latent_dim=20,
        prior_hidden=50,
        prior_latent_dim=5,
        batch_size=64,
        weight_decay=0.0,
        patience=20,
        val_frac=0.1,
    ),
}
for n in (40, 100):
    data = mvi.load_dataset("synthetic-omics", n_samples=n)
    res = {}
    for seed in (0, 1, 2):
        perm = np.random.default_rng(seed).permutation(n)
        nt = int(round(0.2 * n))
        train, test = data.subset(np.sort(perm[nt:])), data.subset(np.sort(perm[:nt]))
        ctr = hide(train, "view", 0.5, seed).data
        cte = hide(test, "view", 0.5, seed + 10000)
        res.setdefault("mean", []).append(mvi.score(mean_imputer().fit(ctr), test, cte.data, n_samples=0)["rmse"])
        for model in sys.argv[1].split(","):
            for tag, kw in (("rule", {}), ("old", OLD[model])):
                imp = mvi.MultiViewImputer(model, epochs=100, progress=False, seed=seed, **kw).fit(ctr)
                r = mvi.score(imp, test, cte.data, n_samples=50, eval_elbo_steps=0)
                res.setdefault(f"{model}-{tag}", []).append(r["rmse"])
    print(n, {k: f"{np.mean(v):.3f}±{np.std(v):.3f}" for k, v in res.items()}, flush=True)
