# ruff: noqa: E501  (measurement script)
"""The conformal stretch t̂ of a digits-halves model per (view, kind) at levels 0.85–0.95, and the 90 %
coverage of its calibrated draws per view on the `evaluate` split (docs/uncertainty.md, "digits-halves:
bounded views calibrated on their latent draws"). Scored on censored draws, t̂ sat at exactly 1.000.
Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/bounded_ties.py MODEL MECHANISM SEED   (e.g. `miwae mcar 0`)
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_cell import digits_cell  # noqa: E402

from mvimpute.models.calibration import level_index  # noqa: E402

torch.set_num_threads(1)
model, mech, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.time()
imp, test, cte = digits_cell(model, mech, seed)
print(f"fit {time.time() - t0:.0f} s")
cal = imp.model_.calibration
levels = range(level_index(0.85), level_index(0.95) + 1)
for i, v in enumerate(cal.views):
    for k, kind in enumerate(("entry", "view")):
        t = [round(float(cal.stretch[i, k, j]), 3) for j in levels]
        print(f"{v} {kind}: {int(cal.n_entries[i, k])} entries, delta {float(cal.delta[i, k]):.3f}, t at 0.85..0.95 {t}")
draws = imp.sample(cte.data.views, n_samples=100)
for v in test.view_names:
    hidden = np.asarray(cte.hidden[v]).astype(bool)
    truth = np.asarray(test.views[v])
    lo, hi = np.quantile(draws[v], [0.05, 0.95], axis=0)
    print(f"{v}: 90 % coverage {((truth >= lo) & (truth <= hi))[hidden].mean():.3f}, share of hidden truths at 0 {(truth[hidden] == 0).mean():.2f}")
