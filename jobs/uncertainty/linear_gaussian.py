# ruff: noqa: E501, B023, B905, E402  (measurement scripts: kept as they were run)
"""Every model on two-view linear-Gaussian data against the exact conditional of a hidden view
(the data of tests/test_uncertainty.py): 90 % coverage and CRPS of raw and calibrated draws.

Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/linear_gaussian.py jpvae,mvae,miwae,tae [JSON extra params]
"""

import sys
import time

import numpy as np
import scoringrules as sr
import torch

sys.path.insert(0, "tests")
from test_uncertainty import FAST, linear_gaussian

import mvimpute as mvi

torch.set_num_threads(1)
import json

extra = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
for name in sys.argv[1].split(","):
    t0 = time.time()
    views, _, _ = linear_gaussian(1500, 0)
    views = mvi.masking.drop_views(mvi.MultiViewData(views), 0.3, seed=0).data
    imp = mvi.MultiViewImputer(name, epochs=60, progress=False, seed=0, **{**FAST[name], **extra}).fit(views)
    test, mean, sd = linear_gaussian(400, 1)
    hidden = {"a": test["a"], "b": np.full_like(test["b"], np.nan)}
    y = test["b"]
    for cal in (False, True):
        lo, hi = imp.predict_interval(hidden, level=0.9, calibrated=cal)
        cov = float(np.mean((y >= lo["b"]) & (y <= hi["b"])))
        draws = imp.sample(hidden, n_samples=100, calibrated=cal)["b"]
        crps = float(np.mean(sr.crps_ensemble(y, draws, m_axis=0)))
        exact = float(np.mean(sr.crps_normal(y, mean, sd)))
        print(
            name,
            "cal" if cal else "raw",
            f"cov {cov:.3f} crps {crps:.4f} exact {exact:.4f} ratio {crps / exact:.3f} rmse {np.sqrt(np.mean((imp.transform(hidden)['b'] - y) ** 2)):.3f} exact-rmse {np.sqrt(np.mean((mean - y) ** 2)):.3f} best {imp.best_epoch_} {time.time() - t0:.0f}s",
            flush=True,
        )
    print(
        name, "stretch90", imp.model_.calibration.stretch[:, :, 89].tolist(), imp.model_.calibration.n_entries.tolist()
    )
