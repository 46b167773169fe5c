"""Embedded data sets: real (scikit-learn's digits as two views) and synthetic multi-omics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .multiview import MultiViewData

DATASETS = ("digits-halves", "synthetic-omics")


def digits_halves() -> MultiViewData:
    """scikit-learn's 1,797 8×8 digits: view `top` = rows 0–3, view `bottom` = rows 4–7, in [0, 1].

    The likelihood is inferred: `bounded` (16 grey levels in [0, 1], with mass at 0 and 1). The
    JPVAE paper protocol passes `likelihoods={"top": "bernoulli", "bottom": "bernoulli"}`.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float64) / 16.0
    cols = [f"px{r}{c}" for r in range(8) for c in range(8)]
    return MultiViewData(
        {"top": x[:, :32], "bottom": x[:, 32:]},
        columns={"top": cols[:32], "bottom": cols[32:]},
        obs=pd.DataFrame({"label": d.target}),
    )


def synthetic_omics(
    n_samples: int = 1000,
    dims: tuple[int, ...] = (60, 40, 30),
    latent_dim: int = 4,
    noise: float = 0.3,
    seed: int = 0,
) -> MultiViewData:
    """Views generated from one shared nonlinear latent, with known truth.

    z ~ N(0, I); for each view, h_v = tanh(z A_v) B_v. View `rna` and `protein` are Gaussian
    (h + noise), view `counts` (when a third view is asked for) is negative binomial with mean
    exp(h) and dispersion 5, further views are Gaussian. `obs` holds the latent z.
    """
    if len(dims) < 2:
        raise ValueError("synthetic-omics needs at least two views")
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_samples, latent_dim))
    names = ["rna", "protein", "counts"] + [f"view{i}" for i in range(3, len(dims))]
    views, likelihoods = {}, {}
    for name, d in zip(names, dims, strict=False):
        a = rng.normal(scale=1.5 / np.sqrt(latent_dim), size=(latent_dim, 16))
        b = rng.normal(scale=1.0 / 4.0, size=(16, d))
        h = np.tanh(z @ a * 1.5) @ b
        if name == "counts":
            mean = np.exp(1.0 + h)
            theta = 5.0
            views[name] = rng.negative_binomial(theta, theta / (theta + mean)).astype(np.float64)
            likelihoods[name] = "negative_binomial"
        else:
            views[name] = h / h.std(0) + noise * rng.normal(size=h.shape)
            likelihoods[name] = "gaussian"
    return MultiViewData(
        views,
        likelihoods=likelihoods,
        index=np.array([f"s{i:05d}" for i in range(n_samples)]),
        obs=pd.DataFrame(z, columns=[f"z{k}" for k in range(latent_dim)]),
    )


def load_dataset(name: str, **kwargs) -> MultiViewData:
    """An embedded data set by name: `digits-halves` or `synthetic-omics` (size as kwargs)."""
    if name == "digits-halves":
        if kwargs:
            raise ValueError(f"digits-halves takes no arguments, got {sorted(kwargs)}")
        return digits_halves()
    if name == "synthetic-omics":
        return synthetic_omics(**kwargs)
    raise ValueError(f"unknown dataset {name!r}; embedded data sets are {list(DATASETS)}")
