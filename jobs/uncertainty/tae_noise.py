# ruff: noqa: E501, B023, B905, E402  (measurement scripts: kept as they were run)
"""TAE on digits-halves: predictive draws with and without the observation noise beta (seed 0, 50 %, 40 epochs).

Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/tae_noise.py
Measured with the then-default noise="inferred", warm-up 0.1 -> 0.2, passed explicitly here.
"""

import time

import torch

import mvimpute as mvi
from mvimpute.evaluation import hide

torch.set_num_threads(1)
data = mvi.load_dataset("digits-halves")


class Raw:
    def __init__(s, imp):
        s.imp = imp

    def transform(s, v):
        return s.imp.transform(v)

    def sample(s, v, n_samples):
        return s.imp.sample(v, n_samples, calibrated=False)


for mech in ["mcar", "view"]:
    for kw in [dict(predictive_noise=False), dict(predictive_noise=True)]:
        t0 = time.time()
        train, test = data.split(0.2, seed=0)
        ctr = hide(train, mech, 0.5, 0).data
        cte = hide(test, mech, 0.5, 10000)
        imp = mvi.MultiViewImputer(
            "tae", epochs=40, progress=False, noise="inferred", warmup_start=0.1, warmup_end=0.2, **kw
        ).fit(ctr)
        r2 = mvi.score(Raw(imp), test, cte.data, n_samples=100, eval_elbo_steps=0)
        print(
            f"digits {mech} {kw}: rmse {r2['rmse']:.4f} raw cov90 {r2['coverage_90']:.3f} crps {r2['crps']:.4f} width90 {r2['width_90']:.3f} {time.time() - t0:.0f}s",
            flush=True,
        )
