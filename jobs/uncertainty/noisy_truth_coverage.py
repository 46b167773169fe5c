# ruff: noqa: E501  (measurement script)
"""Why MVAE and MIWAE over-cover in the TAE protocol with calibrated (`gaussian`) views: the self-supervised
validation split can only hide *noisy* observed pixels, so the conformal intervals are calibrated to
cover a noisy re-observation, while the protocol scores them against the clean pixel. Prints the 90 %
coverage of the calibrated draws against the clean truth and against the truth plus fresh N(0, σ²)
noise (docs/uncertainty.md, "MNIST-5k").
Run: OMP_NUM_THREADS=1 .venv/bin/python jobs/uncertainty/noisy_truth_coverage.py DATA MODEL SEED   (e.g. `mnist-5k mvae 0`; needs mvimpute[bench])
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchmarks  # noqa: E402

torch.set_num_threads(1)
data, model, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
train, test, train_c, test_c = benchmarks.noisy_digits(0.5, seed, 0.1, data)
lks = {"likelihoods": {v: "gaussian" for v in train_c.view_names}}
imp = benchmarks.fit_posterior_model(model, train_c, seed, 10, **lks)
draws = imp.sample(test_c.views, n_samples=100)
rng = np.random.default_rng(seed + 7)
for v in test.view_names:
    hidden = np.isnan(test_c.views[v])
    clean = test.views[v]
    noisy = clean + rng.normal(scale=0.1, size=clean.shape)
    lo, hi = np.quantile(draws[v], [0.05, 0.95], axis=0)
    for name, y in (("clean truth", clean), ("truth + N(0, 0.1²)", noisy)):
        print(f"{model} {v}: 90 % coverage of the hidden pixels' {name}: {((y >= lo) & (y <= hi))[hidden].mean():.3f}")
