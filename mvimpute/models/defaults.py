"""Defaults that adapt to the number of samples (small omics studies have tens of samples).

The rule, for n samples given to `fit` (before the validation split), when n < `SMALL_N`:

- hidden width h = the power of two nearest n / 4, within [16, default]; JPVAE gets (h, h),
  the posterior models (TAE, MVAE, MIWAE) h; TAE's prior network min(50, h);
- latent size = round(n / 25) within [2, 20] per view (JPVAE) or in all (the posterior models);
- batch size = n / 8 within [8, 64] (at least 4 steps per epoch);
- weight decay 1e-3 (Adam's L2), patience 40 epochs, validation share 0.2 (n < 200);
- JPVAE: Σ̂'s cross-view couplings shrunk by an estimated intensity (`cross_shrinkage="auto"`).

At n ≥ `SMALL_N` nothing changes. Any parameter the caller names is left as given. The rule was
set on synthetic-omics (see docs/uncertainty.md, "Small data"), not tuned per data set.
"""

from __future__ import annotations

import math

SMALL_N = 1000


def _pow2(x: float) -> int:
    return 2 ** int(round(math.log2(max(x, 1.0))))


def size_defaults(model: str, n: int, given: set[str] | frozenset[str] = frozenset()) -> tuple[dict, dict]:
    """(model params, train params) for a data set of n samples; keys in `given` are left out."""
    if n >= SMALL_N:
        return {}, {}
    h = _pow2(n / 4)
    latent = int(min(20, max(2, round(n / 25))))
    if model == "jpvae":
        width = int(min(512, max(16, h)))
        mp = {"hidden": (width, width), "latent_dim": latent, "cross_shrinkage": "auto"}
    else:
        width = int(min(400, max(16, h)))
        mp = {"hidden": width, "latent_dim": latent}
        if model == "tae":
            mp["prior_hidden"] = int(min(50, width))
            mp["prior_latent_dim"] = int(min(5, latent))
    tp = {"batch_size": int(min(64, max(8, n // 8))), "weight_decay": 1e-3, "patience": 40}
    if n < 200:
        tp["val_frac"] = 0.2
    return {k: v for k, v in mp.items() if k not in given}, {k: v for k, v in tp.items() if k not in given}
