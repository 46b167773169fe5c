# ruff: noqa: E501, E701, E702, B905, UP031  (measurement scripts: kept as they were run)
"""JPVAE on synthetic-omics with the `evaluate` split, 50 % hidden: per-view RMSE, CRPS, 90 % coverage and λ.

Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/cross_shrinkage_check.py N SEEDS [KWARGS] [MECHANISM]
     N = 0: the default size (1,000 samples); KWARGS a Python dict of MultiViewImputer parameters, e.g.
     `... 0 0 "{'cross_shrinkage': 'auto'}" view` (λ estimated at 1,000 samples, about 1 min) against `... 0 0 "{}" view`;
     `... 40 0,1,2 "{'cross_shrinkage': 1.0}"`.
"""
import sys

import numpy as np
import torch

import mvimpute as mvi
from mvimpute.baselines import mean_imputer
from mvimpute.evaluation import hide

torch.set_num_threads(1)
n=int(sys.argv[1]); seeds=[int(s) for s in sys.argv[2].split(",")]
kw=eval(sys.argv[3]) if len(sys.argv)>3 else {}
mech=sys.argv[4] if len(sys.argv)>4 else "view"
data=mvi.load_dataset("synthetic-omics", n_samples=n) if n else mvi.load_dataset("synthetic-omics")
n=data.n_samples
out=[]
for seed in seeds:
    perm=np.random.default_rng(seed).permutation(n); nt=int(round(0.2*n))
    train,test=data.subset(np.sort(perm[nt:])),data.subset(np.sort(perm[:nt]))
    ctr=hide(train,mech,0.5,seed).data; cte=hide(test,mech,0.5,seed+10000)
    m=mvi.score(mean_imputer().fit(ctr),test,cte.data,n_samples=0)
    imp=mvi.MultiViewImputer("jpvae",epochs=100,progress=False,seed=seed,**kw).fit(ctr)
    s=mvi.score(imp,test,cte.data,n_samples=100,eval_elbo_steps=0)
    lam=float(imp.model_.cross_shrinkage_)
    out.append((m["rmse"],s["rmse"],s["crps"],s["coverage_90"]))
    print(seed,"lam %.3f"%lam,"mean %.3f"%m["rmse"],{k:round(v,3) for k,v in s.items() if "rmse" in k or k in("crps","coverage_90")},flush=True)
o=np.array(out); print(kw, "avg mean %.3f model %.3f crps %.3f cov %.3f"%tuple(o.mean(0)))
