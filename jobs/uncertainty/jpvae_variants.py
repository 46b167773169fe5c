# ruff: noqa: E501, E701, E702, B905, UP031  (measurement script)
"""JPVAE variants on one digits-halves `evaluate` cell (docs/uncertainty.md): RMSE, CRPS and 90 % coverage
of each variant, e.g. the `bernoulli` likelihood against the default `bounded`, or conditional="prior".
Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/jpvae_variants.py MECHANISM RATE SEED 'JSON list of params'
  (e.g. `view 0.2 0 '[{}, {"likelihood": "bernoulli"}, {"val_score": "rmse"}, {"conditional": "prior"}]'`)
"""
import json
import sys
import time

import numpy as np
import torch

import mvimpute as mvi
from mvimpute.data.multiview import as_multiview
from mvimpute.evaluation import hide
from mvimpute.scoring import score

torch.set_num_threads(1)
mech, rate, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
variants = json.loads(sys.argv[4])
data = mvi.load_dataset("digits-halves"); n = data.n_samples
perm = np.random.default_rng(seed).permutation(n); nt = int(round(0.2 * n))
train, test = data.subset(np.sort(perm[nt:])), data.subset(np.sort(perm[:nt]))
ctr = hide(train, mech, rate, seed).data; cte = hide(test, mech, rate, seed + 10000)
for v in variants:
    v = dict(v); lik = v.pop("likelihood", None)
    tr, te, ce = ctr, test, cte.data
    if lik:
        L = {k: lik for k in data.view_names}
        tr, te, ce = as_multiview(ctr, L), as_multiview(test, L), as_multiview(cte.data, L)
    t0 = time.time()
    imp = mvi.MultiViewImputer("jpvae", epochs=100, progress=False, **v).fit(tr)
    s = score(imp, te, ce, n_samples=100, eval_elbo_steps=0)
    print(lik, v, "rmse %.4f crps %.4f cov %.3f best %d (%.0fs)" % (s["rmse"], s["crps"], s["coverage_90"], imp.best_epoch_, time.time() - t0), flush=True)
