"""One digits-halves `evaluate` cell at rate 0.5 (its split, masks and a model fitted with the library
defaults), shared by the measurement scripts beside it."""

import numpy as np

import mvimpute as mvi
from mvimpute.evaluation import hide


def digits_cell(model: str, mech: str, seed: int):
    """(fitted imputer, clean test split, its `Corrupted` masks) as `mvimpute evaluate` makes them."""
    data = mvi.load_dataset("digits-halves")
    perm = np.random.default_rng(seed).permutation(data.n_samples)
    nt = int(round(0.2 * data.n_samples))
    train, test = data.subset(np.sort(perm[nt:])), data.subset(np.sort(perm[:nt]))
    imp = mvi.MultiViewImputer(model, epochs=100, progress=False, seed=seed).fit(hide(train, mech, 0.5, seed).data)
    return imp, test, hide(test, mech, 0.5, seed + 10000)
