# ruff: noqa: E501, E701, E702, B905, UP031  (measurement script)
"""A pooled (one ratio per count view) and a per-column correction of JPVAE's count means, measured on
small synthetic-omics (docs/uncertainty.md, "Small data"): c = Σ x / Σ x̂ over the training rows that
observe the count view, x̂ their predictions with that view hidden; prints the pooled RMSE of the model,
of both corrections and of the column mean per seed (imputer seeded by the split seed).
Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/count_ratio_pooled.py N SEEDS [view|mcar]   (e.g. `40 10`)
"""
import sys

import numpy as np
import torch

import mvimpute as mvi
from mvimpute.evaluation import hide

torch.set_num_threads(1)
n = int(sys.argv[1]); seeds = range(int(sys.argv[2])); mech = sys.argv[3] if len(sys.argv) > 3 else "view"
data = mvi.load_dataset("synthetic-omics", n_samples=n) if n else mvi.load_dataset("synthetic-omics")
n = data.n_samples
res = {k: [] for k in ("model", "pooled", "percol", "mean")}
def rmse_all(P, cte, test):
    e = []
    for v in test.view_names:
        H = np.asarray(cte.hidden[v]).astype(bool); X = np.asarray(test.views[v])
        e.append((np.asarray(P[v]) - X)[H])
    return np.sqrt(np.mean(np.concatenate(e) ** 2))
for seed in seeds:
    perm = np.random.default_rng(seed).permutation(n); nt = int(round(0.2 * n))
    train, test = data.subset(np.sort(perm[nt:])), data.subset(np.sort(perm[:nt]))
    ctr = hide(train, mech, 0.5, seed).data; cte = hide(test, mech, 0.5, seed + 10000)
    imp = mvi.MultiViewImputer("jpvae", epochs=100, progress=False, seed=seed).fit(ctr)
    X = np.asarray(ctr.views["counts"]); obs = ~np.isnan(X); rows = obs.any(1)
    views = {k: np.asarray(v)[rows].copy() for k, v in ctr.views.items()}
    views["counts"][:] = np.nan
    Ptr = np.asarray(imp.transform(views)["counts"])
    Xo = X[rows]; Oo = obs[rows]
    c_pool = np.where(Oo, Xo, 0).sum() / np.where(Oo, Ptr, 0).sum()
    c_col = np.where(Oo, Xo, 0).sum(0) / np.where(Oo, Ptr, 0).sum(0)
    P = imp.transform(cte.data.views)
    base = rmse_all(P, cte, test)
    Pp = dict(P); hid = np.isnan(np.asarray(cte.data.views["counts"]))
    Pp["counts"] = np.where(hid, np.asarray(P["counts"]) * c_pool, P["counts"])
    Pc = dict(P); Pc["counts"] = np.where(hid, np.asarray(P["counts"]) * c_col, P["counts"])
    Pm = {v: np.where(np.isnan(np.asarray(cte.data.views[v])), np.nanmean(np.asarray(ctr.views[v]), 0), cte.data.views[v]) for v in test.view_names}
    r = dict(model=base, pooled=rmse_all(Pp, cte, test), percol=rmse_all(Pc, cte, test), mean=rmse_all(Pm, cte, test))
    for k in res: res[k].append(r[k])
    print(seed, "c_pool %.3f" % c_pool, " ".join("%s %.3f" % kv for kv in r.items()), flush=True)
m = {k: np.mean(v) for k, v in res.items()}
print("MEAN", " ".join("%s %.3f" % kv for kv in m.items()), "| pooled better than model in", sum(np.array(res["pooled"]) < np.array(res["model"])), "better than mean", sum(np.array(res["pooled"]) < np.array(res["mean"])))
