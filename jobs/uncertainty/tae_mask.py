# ruff: noqa: E501, B023, B905, E402  (measurement scripts: kept as they were run)
"""TAE on digits-halves: q(x|z) with and without the mask input (seed 0, 50 % hidden, 40 epochs).

Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/tae_mask.py digits-halves 40
Measured with the then-default noise="inferred", warm-up 0.1 -> 0.2, passed explicitly here.
"""

import sys
import time

import torch

import mvimpute as mvi
from mvimpute.evaluation import hide

torch.set_num_threads(1)
data = mvi.load_dataset(sys.argv[1])
for mech in ["mcar", "view"]:
    for mask in [False, True]:
        t0 = time.time()
        train, test = data.split(0.2, seed=0)
        ctr = hide(train, mech, 0.5, 0).data
        cte = hide(test, mech, 0.5, 10000)
        imp = mvi.MultiViewImputer(
            "tae",
            epochs=int(sys.argv[2]),
            progress=False,
            posterior_conditions_on_mask=mask,
            noise="inferred",
            warmup_start=0.1,
            warmup_end=0.2,
        ).fit(ctr)
        raw = mvi.score(imp, test, cte.data, n_samples=100, eval_elbo_steps=0)

        # uncalibrated draws
        class Raw:
            def __init__(s, imp):
                s.imp = imp

            def transform(s, v):
                return s.imp.transform(v)

            def sample(s, v, n_samples):
                return s.imp.sample(v, n_samples, calibrated=False)

        r2 = mvi.score(Raw(imp), test, cte.data, n_samples=100, eval_elbo_steps=0)
        print(
            f"{sys.argv[1]} {mech} mask={mask}: rmse {raw['rmse']:.4f} | raw cov90 {r2['coverage_90']:.3f} crps {r2['crps']:.4f} | calibrated cov90 {raw['coverage_90']:.3f} crps {raw['crps']:.4f} | best epoch {imp.best_epoch_} {time.time() - t0:.0f}s",
            flush=True,
        )
