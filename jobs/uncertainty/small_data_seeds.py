# ruff: noqa: E501, E701, E702, B905, UP031  (measurement script)
"""JPVAE against the column mean on small synthetic-omics, one view hidden per test sample, with the
imputer seeded by the split seed (the `evaluate` command uses one imputer seed for every split):
per seed the pooled RMSE and each view's RMSE (model / column mean) and the mean prediction's ratio
to the training column mean. Optional JSON of JPVAE parameters (docs/uncertainty.md, "Small data").
Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/small_data_seeds.py N SEEDS ['{"kl_weight": 0.5}']   (e.g. `40 10`)
"""
import json
import sys

import numpy as np
import torch

import mvimpute as mvi
from mvimpute.evaluation import hide

torch.set_num_threads(1)
n = int(sys.argv[1]); seeds = range(int(sys.argv[2])); params = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
data = mvi.load_dataset("synthetic-omics", n_samples=n)
tot = {"model": [], "mean": []}; per = {}
for seed in seeds:
    perm = np.random.default_rng(seed).permutation(n); nt = int(round(0.2 * n))
    train, test = data.subset(np.sort(perm[nt:])), data.subset(np.sort(perm[:nt]))
    ctr = hide(train, "view", 0.5, seed).data; cte = hide(test, "view", 0.5, seed + 10000)
    imp = mvi.MultiViewImputer("jpvae", epochs=100, progress=False, seed=seed, **params).fit(ctr)
    P = imp.transform(cte.data.views)
    em, en = [], []
    line = []
    for v in test.view_names:
        H = np.asarray(cte.hidden[v]).astype(bool); X = np.asarray(test.views[v])
        if not H.any(): continue
        cm = np.nanmean(np.asarray(ctr.views[v]), 0)
        e1 = (np.asarray(P[v]) - X)[H]; e0 = (np.broadcast_to(cm, X.shape) - X)[H]
        em.append(e1); en.append(e0)
        rows = H.any(1)
        line.append("%s %.3f/%.3f pred/cm %.2f" % (v[:5], np.sqrt(np.mean(e1**2)), np.sqrt(np.mean(e0**2)), np.asarray(P[v])[rows].mean() / cm.mean()))
        per.setdefault(v, []).append(np.sqrt(np.mean(e1**2)) < np.sqrt(np.mean(e0**2)))
    a, b = np.sqrt(np.mean(np.concatenate(em)**2)), np.sqrt(np.mean(np.concatenate(en)**2))
    tot["model"].append(a); tot["mean"].append(b)
    print(seed, "%.3f vs %.3f" % (a, b), " | ".join(line), flush=True)
print("mean RMSE model %.3f column-mean %.3f; better in %d of %d" % (np.mean(tot["model"]), np.mean(tot["mean"]), sum(np.array(tot["model"]) < np.array(tot["mean"])), len(tot["model"])), {v: sum(x) for v, x in per.items()})
