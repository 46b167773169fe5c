# ruff: noqa: E501, E701, E702, B905, UP031  (measurement scripts: kept as they were run)
"""Per view: coverage of `predict_interval` (calibrated and raw) on the test split's hidden entries, and on
entries hidden validation-style (20 % more of the observed ones), synthetic-omics, the `evaluate` split.
The diagnosis behind the calibrated draws' noise floor (docs/uncertainty.md): compare with `evaluate`'s
per-view `coverage_90/<view>`, which scores the draws of `sample`.
Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/draws_vs_interval.py SEED MODEL MECHANISM   (e.g. `1 tae mcar`)
"""
import sys

import numpy as np
import torch

import mvimpute as mvi
from mvimpute import masking
from mvimpute.evaluation import hide

torch.set_num_threads(1)
seed=int(sys.argv[1]); model=sys.argv[2]; mech=sys.argv[3] if len(sys.argv)>3 else "mcar"
data=mvi.load_dataset("synthetic-omics"); n=data.n_samples
perm=np.random.default_rng(seed).permutation(n); nt=int(round(0.2*n))
train,test=data.subset(np.sort(perm[nt:])),data.subset(np.sort(perm[:nt]))
ctr=hide(train,mech,0.5,seed).data; cte=hide(test,mech,0.5,seed+10000)
imp=mvi.MultiViewImputer(model,epochs=100,progress=False,seed=seed).fit(ctr)
def cov(inp, truth, hidden, tag):
    lo,hi=imp.predict_interval(inp.views, level=0.9)
    lo0,hi0=imp.predict_interval(inp.views, level=0.9, calibrated=False)
    out={}
    for v in truth.view_names:
        H=np.asarray(hidden[v]).astype(bool); X=np.asarray(truth.views[v])
        if H.sum()==0: continue
        c=((X>=lo[v])&(X<=hi[v]))[H].mean(); c0=((X>=lo0[v])&(X<=hi0[v]))[H].mean()
        w=(hi[v]-lo[v])[H].mean(); w0=(hi0[v]-lo0[v])[H].mean()
        out[v]="cal %.3f raw %.3f width %.2f/%.2f n %d"%(c,c0,w,w0,H.sum())
    print(tag, out, flush=True)
cov(cte.data, test, cte.hidden, "test-50%")
# validation-like: hide 20% more of the corrupted test rows' observed entries
more=masking.mcar(cte.data, 0.2, 123)
cov(more.data, test, more.hidden, "test-then-20%")
# training rows (seen in training), validation-like extra 20%
more_tr=masking.mcar(ctr, 0.2, 321)
cov(more_tr.data, train, more_tr.hidden, "train-then-20%")
