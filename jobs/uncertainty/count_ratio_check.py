# ruff: noqa: E501, E701, E702, B905, UP031, SIM210  (measurement scripts: kept as they were run)
"""A smearing-type correction of JPVAE's count means, tried and dropped (docs/uncertainty.md, "Small data").

Each count column's decoded mean is scaled by c = Σ x / Σ x̂ over the training rows that observe the count
view, x̂ their predictions with that view hidden; prints the count view's test RMSE with and without c.
Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/count_ratio_check.py N SEEDS view   (e.g. `40 0,1,2 view`)
"""
import sys

import numpy as np
import torch

import mvimpute as mvi
from mvimpute.evaluation import hide

torch.set_num_threads(1)
n=int(sys.argv[1]); seeds=[int(s) for s in sys.argv[2].split(",")]; mech=sys.argv[3]
data=mvi.load_dataset("synthetic-omics", n_samples=n) if n else mvi.load_dataset("synthetic-omics")
n=data.n_samples; v="counts"
def rm(P,X,H): return np.sqrt(((P-X)**2)[H].mean())
for seed in seeds:
    perm=np.random.default_rng(seed).permutation(n); nt=int(round(0.2*n))
    train,test=data.subset(np.sort(perm[nt:])),data.subset(np.sort(perm[:nt]))
    ctr=hide(train,mech,0.5,seed).data; cte=hide(test,mech,0.5,seed+10000)
    imp=mvi.MultiViewImputer("jpvae",epochs=100,progress=False,seed=seed).fit(ctr)
    om=np.asarray(ctr.masks[v]).astype(bool); rows=om.any(1)
    tr=ctr.subset(np.where(rows)[0]); hidden=tr.with_views({v:None}) if False else None
    # hide the count view of training rows observing it
    views={k:np.asarray(tr.views[k]).copy() for k in tr.view_names}; views[v][:]=np.nan
    trh=mvi.MultiViewData.from_frame if False else None
    P_tr=np.asarray(imp.transform({k:views[k] for k in tr.view_names})[v])
    X_tr=np.asarray(tr.views[v])
    c=X_tr.sum(0)/P_tr.sum(0)
    colmean=np.nansum(np.where(om,np.asarray(ctr.views[v]),0),0)/om.sum(0)
    P=np.asarray(imp.transform(cte.data.views)[v] if False else imp.transform(cte.data).views[v]); X=np.asarray(test.views[v]); H=np.asarray(cte.hidden[v])
    print(seed,"counts rmse model %.3f ratio-corrected %.3f mean %.3f"%(rm(P,X,H),rm(P*c,X,H),rm(np.broadcast_to(colmean,X.shape),X,H)), "c range %.2f-%.2f"%(c.min(),c.max()),flush=True)
