# ruff: noqa: E501, B023, B905, E402  (measurement scripts: kept as they were run)
"""JPVAE on digits-halves: plug-in point imputation (decoded conditional latent mean) against the
predictive mean over 64 latent draws (seed 0, 50 % hidden, 60 epochs).

Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/jpvae_mean.py
"""

import numpy as np
import torch

import mvimpute as mvi
from mvimpute.evaluation import hide
from mvimpute.models import likelihoods as lk

torch.set_num_threads(1)
data = mvi.load_dataset("digits-halves")
for mech in ["view", "mcar"]:
    train, test = data.split(0.2, seed=0)
    ctr = hide(train, mech, 0.5, 0).data
    cte = hide(test, mech, 0.5, 10000)
    imp = mvi.MultiViewImputer("jpvae", epochs=60, progress=False).fit(ctr)
    h = mvi.scoring.hidden_entries(test, cte.data)
    plug = imp.transform(cte.data.views)
    _, batch = imp._prepare(cte.data.views)
    m = imp.model_
    with torch.no_grad():
        torch.manual_seed(0)
        zs = m.latents(batch, 64)
        pm = {
            info.name: lk.mean(info.likelihood, m.decode(info.name, z)).mean(0).numpy()
            for info, z in zip(m.view_infos, zs)
        }
        zs = m.latents(batch, None)
        pm_nodraw = {
            info.name: lk.mean(info.likelihood, m.decode(info.name, z[0])).numpy() for info, z in zip(m.view_infos, zs)
        }

    def rmse(f):
        return np.sqrt(
            np.mean(np.concatenate([(np.asarray(f[v])[hh] - test.views[v][hh]) for v, hh in h.items()]) ** 2)
        )

    print(mech, "plug-in", rmse(plug), "mc-predictive-mean", rmse(pm), "nodraw", rmse(pm_nodraw), flush=True)
