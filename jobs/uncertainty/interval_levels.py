# ruff: noqa: E501  (measurement script)
"""Coverage of `predict_interval(level)` (calibrated at each level) against the central intervals of the
calibrated draws of `sample` (calibrated at 90 % only), per level, on one digits-halves `evaluate` cell
(docs/uncertainty.md, "Calibrated at every level, or at 90 %").
Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/interval_levels.py MODEL MECHANISM SEED   (e.g. `jpvae view 0`)
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_cell import digits_cell  # noqa: E402

torch.set_num_threads(1)
imp, test, cte = digits_cell(sys.argv[1], sys.argv[2], int(sys.argv[3]))
draws = imp.sample(cte.data.views, n_samples=100)
hidden = {v: np.asarray(cte.hidden[v]).astype(bool) for v in test.view_names}
truth = {v: np.asarray(test.views[v]) for v in test.view_names}
print("level | predict_interval | draws' central interval")
for level in (0.1, 0.3, 0.5, 0.7, 0.9):
    lo, hi = imp.predict_interval(cte.data.views, level=level)
    q = {v: np.quantile(draws[v], [(1 - level) / 2, (1 + level) / 2], axis=0) for v in test.view_names}
    by_interval = np.concatenate([((truth[v] >= lo[v]) & (truth[v] <= hi[v]))[hidden[v]] for v in test.view_names]).mean()
    by_draws = np.concatenate([((truth[v] >= q[v][0]) & (truth[v] <= q[v][1]))[hidden[v]] for v in test.view_names]).mean()
    print(f"{level:.1f} | {by_interval:.3f} | {by_draws:.3f}", flush=True)
