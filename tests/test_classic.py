"""Classic imputers as models (`mean`, `knn`, `mice`): their draws and intervals against independent
references (a Gaussian whose conditionals are known in closed form; scikit-learn's KNNImputer; data
whose nearest neighbours are known by construction; numpy's quantiles), calibrated coverage on
held-out data, and each one through the checkpoint, the predictor, the pyfunc, the batch job and
the endpoint — with a KNN checkpoint, which holds its training rows, refused above the stated size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import mvimpute as mvi
from mvimpute.batch import MultiViewBatch
from mvimpute.models import ViewInfo, build_model
from mvimpute.predictor import MAX_TRAINING_ROWS, MAX_TRAINING_ROWS_ENV, Predictor

CLASSIC = ("mean", "knn", "mice")
SMALL = {"mean": {}, "knn": {"k": 5}, "mice": {"n_iter": 3, "sweeps": 5}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fit_model(name: str, arrays: dict, dtype=torch.float32, **params):
    """A classic model fitted on `arrays` (NaN = missing) in their own scale, without calibration."""
    views = [ViewInfo(v, a.shape[1], "gaussian") for v, a in arrays.items()]
    model = build_model(name, views, **params)
    batch = MultiViewBatch.from_arrays(arrays, dtype=dtype)
    model.after_fit(lambda: iter([batch]))
    return model.eval()


# ----------------------------------------------------------------------------- MICE: a Gaussian toy

SIGMA = np.array([[1.0, 0.6, 0.3], [0.6, 1.0, 0.5], [0.3, 0.5, 1.0]])  # view a = x1, view b = (x2, x3)


def _toy(n: int, seed: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).multivariate_normal(np.zeros(3), SIGMA, size=n)
    return {"a": x[:, :1], "b": x[:, 1:]}


def _conditional(x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The closed-form law of (x2, x3) given x1: means (n, 2) and the covariance (2, 2)."""
    s_ba, s_aa = SIGMA[1:, :1], SIGMA[:1, :1]
    mean = x1 @ np.linalg.solve(s_aa, s_ba.T)
    cov = SIGMA[1:, 1:] - s_ba @ np.linalg.solve(s_aa, s_ba.T)
    return mean, cov


@pytest.fixture(scope="module")
def toy_mice():
    train = _toy(3000, 0)
    rng = np.random.default_rng(1)
    for a in train.values():
        a[rng.random(a.shape) < 0.2] = np.nan
    train["b"][rng.random(3000) < 0.2] = np.nan
    train["a"][np.isnan(train["b"]).all(1) & np.isnan(train["a"][:, 0])] = 0.0  # no empty row
    return mvi.MultiViewImputer("mice", n_iter=5, sweeps=10, seed=0, progress=False).fit(train)


def test_mice_draws_follow_the_closed_form_gaussian_conditional(toy_mice):
    """View b hidden: the draws of (x2, x3) | x1, whitened by the closed-form conditional law, have mean 0
    and covariance I (so the chains reproduce the joint conditional, correlation included); the point
    imputation is the conditional mean; the raw 90 % interval ends are its quantiles."""
    test = _toy(400, 2)
    hidden = {"a": test["a"], "b": np.full_like(test["b"], np.nan)}
    mean, cov = _conditional(test["a"])
    draws = toy_mice.sample(hidden, n_samples=300, calibrated=False)["b"]  # (S, n, 2)
    white = np.linalg.solve(np.linalg.cholesky(cov), (draws - mean).reshape(-1, 2).T).T
    np.testing.assert_allclose(white.mean(0), 0.0, atol=0.05)
    np.testing.assert_allclose(np.cov(white.T), np.eye(2), atol=0.08)
    point = toy_mice.transform(hidden)["b"]
    assert np.sqrt(np.mean((point - mean) ** 2)) < 0.05
    lo, hi = toy_mice.predict_interval(hidden, level=0.9, n_samples=300, calibrated=False)
    half = stats.norm.ppf(0.95) * np.sqrt(np.diag(cov))
    # a quantile of 300 draws errs by about 0.1 of a standard deviation per entry, not on average
    for end, ref in ((lo["b"], mean - half), (hi["b"], mean + half)):
        assert np.abs((end - ref).mean(0)).max() < 0.06 and np.abs(end - ref).mean() < 0.12


def test_mice_calibrated_intervals_cover_their_level_on_the_toy(toy_mice):
    test = _toy(1500, 3)
    truth = {v: a.copy() for v, a in test.items()}
    rng = np.random.default_rng(4)
    test["b"][rng.random(1500) < 0.5] = np.nan  # whole view b missing
    test["b"][rng.random((1500, 2)) < 0.2] = np.nan  # entries missing inside it
    lo, hi = toy_mice.predict_interval(test, level=0.9)
    miss = np.isnan(test["b"])
    inside = (lo["b"] <= truth["b"]) & (truth["b"] <= hi["b"])
    assert 0.86 <= inside[miss].mean() <= 0.94


# ----------------------------------------------------------------------------- KNN


def _clusters(n_clusters=20, k=5, d=(3, 3), seed=0):
    """Training rows in tight clusters of exactly k rows, far apart; the query is each cluster's centre."""
    rng = np.random.default_rng(seed)
    centres = 10.0 * rng.normal(size=(n_clusters, sum(d)))
    members = centres[:, None, :] + 0.05 * rng.normal(size=(n_clusters, k, sum(d)))
    train = members.reshape(-1, sum(d))
    split = np.cumsum(d)[:-1]
    return dict(zip(("a", "b"), np.split(train, split, axis=1), strict=True)), centres, members


def test_knn_neighbours_are_the_cluster_and_its_draws_are_their_rows():
    k = 5
    train, centres, members = _clusters(k=k)
    model = _fit_model("knn", train, k=k)
    query = {"a": centres[:, :3].copy(), "b": centres[:, 3:].copy()}
    query["b"][:] = np.nan  # view b missing: its neighbours are found on view a
    query["a"][::2, 1] = np.nan  # and an entry of view a in every second row
    batch = MultiViewBatch.from_arrays(query)
    point = torch.cat([model.impute_mean(batch)[v] for v in ("a", "b")], 1).numpy()
    torch.manual_seed(0)
    drawn = model.impute(batch, 100)
    draws = torch.cat([drawn["a"], drawn["b"]], 2).numpy()  # (S, n, 6)
    miss = np.isnan(np.concatenate([query["a"], query["b"]], 1))
    for c in range(len(centres)):
        cols = np.flatnonzero(miss[c])
        np.testing.assert_allclose(point[c, cols], members[c][:, cols].mean(0), rtol=1e-5)
        # each draw is one member's row (a hot deck), and every member is drawn 100 / k times
        rows = draws[:, c, cols]
        which = np.argmin(((rows[:, None, :] - members[c][None, :, cols]) ** 2).sum(-1), axis=1)
        np.testing.assert_allclose(rows, members[c][which][:, cols], rtol=1e-6)
        assert np.bincount(which, minlength=k).tolist() == [100 // k] * k


def test_knn_point_imputation_is_scikit_learns_knn_imputer():
    """On rows with entries missing everywhere, and a column observed in only a tenth of the training
    rows (its donors lie beyond the nearest rows searched first), the mean of the k donors is
    KNNImputer's."""
    from sklearn.impute import KNNImputer

    rng = np.random.default_rng(0)
    latent = rng.normal(size=(400, 2))
    x = latent @ rng.normal(size=(2, 7)) + 0.3 * rng.normal(size=(400, 7))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:300, 0][rng.random(300) < 0.9] = np.nan
    train, test = x[:300], x[300:]
    test = test[~np.isnan(test).all(1)]
    ref = KNNImputer(n_neighbors=7).fit(train).transform(test)
    model = _fit_model("knn", {"a": train[:, :4], "b": train[:, 4:]}, dtype=torch.float64, k=7)
    out = model.impute_mean(MultiViewBatch.from_arrays({"a": test[:, :4], "b": test[:, 4:]}, dtype=torch.float64))
    np.testing.assert_allclose(torch.cat([out["a"], out["b"]], 1).numpy(), ref, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- column mean


def test_mean_draws_are_the_columns_empirical_distribution():
    rng = np.random.default_rng(0)
    a = np.column_stack([rng.exponential(size=500), rng.integers(0, 4, size=500).astype(float)])
    a[rng.random(a.shape) < 0.3] = np.nan
    model = _fit_model("mean", {"a": a}, dtype=torch.float64, quantiles=128)
    levels = (np.arange(128) + 0.5) / 128
    for j in range(2):
        col = a[~np.isnan(a[:, j]), j]
        ref = np.quantile(col, levels, method="inverted_cdf")
        np.testing.assert_array_equal(model.atoms[:, j].numpy(), ref.astype(np.float32))  # stored as float32
    query = np.full((50, 2), np.nan)
    batch = MultiViewBatch.from_arrays({"a": query}, dtype=torch.float64)
    np.testing.assert_allclose(model.impute_mean(batch)["a"].numpy(), np.broadcast_to(np.nanmean(a, 0), (50, 2)))
    draws = model.impute(batch, 400)["a"].numpy()
    for j in range(2):
        col = a[~np.isnan(a[:, j]), j]
        assert np.isin(draws[..., j], col.astype(np.float32)).all()  # observed values only (stored as float32)
        assert stats.ks_2samp(draws[..., j].ravel(), col).statistic < 0.04


# ----------------------------------------------------------------------------- coverage on held-out data


@pytest.mark.parametrize("name", CLASSIC)
def test_calibrated_intervals_cover_their_level_on_held_out_data(name):
    data = mvi.load_dataset("synthetic-omics", n_samples=900, dims=(10, 8, 6), seed=2)
    train, test = data.subset(np.arange(600)), data.subset(np.arange(600, 900))
    c_train = mvi.masking.corrupt(train, mcar_rate=0.3, view_rate=0.2, seed=0).data
    steps = mvi.masking.corrupt(test, mcar_rate=0.3, view_rate=0.2, seed=1)
    imp = mvi.MultiViewImputer(name, progress=False, **SMALL[name]).fit(c_train)
    lo, hi = imp.predict_interval(steps.data)
    inside = np.concatenate([((lo[v] <= test.views[v]) & (test.views[v] <= hi[v]))[h] for v, h in steps.hidden.items()])
    assert 0.85 <= inside.mean() <= 0.95, inside.mean()


# ----------------------------------------------------------------------------- checkpoints and serving


@pytest.fixture(scope="module")
def omics():
    data = mvi.load_dataset("synthetic-omics", n_samples=300, dims=(6, 5, 4), seed=1)
    return mvi.masking.corrupt(data, mcar_rate=0.2, view_rate=0.2, seed=0).data


@pytest.fixture(scope="module")
def checkpoints(omics, tmp_path_factory):
    root = tmp_path_factory.mktemp("classic")
    out = {}
    for name in CLASSIC:
        imp = mvi.MultiViewImputer(name, progress=False, **SMALL[name]).fit(omics)
        out[name] = (imp, imp.save(root / f"{name}.pt"))
    return out


def test_checkpoints_are_plain_tensors_and_say_what_training_data_they_hold(checkpoints, omics):
    for name, (imp, path) in checkpoints.items():
        state = torch.load(path, weights_only=True)  # no pickled objects
        assert state["model"] == name
        assert all(isinstance(t, torch.Tensor) for t in state["state_dict"].values())
        n_train = omics.n_samples - len(imp.validation_index_)
        if name == "knn":
            assert state["training_rows"]["rows"] == n_train and state["training_rows"]["columns"] == 15
            assert state["state_dict"]["rows"].shape == (n_train, 15)
        else:
            assert state["training_rows"] is None
            assert all(t.shape[0] != n_train for t in state["state_dict"].values() if t.dim())


def test_a_served_knn_model_is_refused_above_its_training_rows_limit(checkpoints, monkeypatch):
    from mvimpute import endpoint

    imp, path = checkpoints["knn"]
    n = imp.model_.rows.shape[0]
    assert Predictor.from_checkpoint(path, device="cpu", max_training_rows=n).metadata()["training_rows"]["rows"] == n
    with pytest.raises(ValueError, match=rf"{n:,} training rows.*above {n - 1:,} rows"):
        Predictor.from_checkpoint(path, device="cpu", max_training_rows=n - 1)
    with pytest.raises(ValueError, match=rf"above {n - 1:,} rows"):  # the endpoint's own setting
        endpoint.load_predictor(endpoint.AppArgs(checkpoint=str(path), device="cpu", max_training_rows=n - 1))
    monkeypatch.setenv(MAX_TRAINING_ROWS_ENV, str(n - 1))
    with pytest.raises(ValueError, match=MAX_TRAINING_ROWS_ENV):
        Predictor.from_checkpoint(path, device="cpu")
    for other in ("mean", "mice"):  # models holding no rows are never refused
        Predictor.from_checkpoint(checkpoints[other][1], device="cpu", max_training_rows=1)


@pytest.mark.parametrize("name", CLASSIC)
def test_the_predictor_gives_means_spread_and_intervals_and_keeps_observed_values(checkpoints, omics, name):
    pred = Predictor.from_checkpoint(checkpoints[name][1], device="cpu")
    out = pred.predict(omics, outputs=("std", "interval", "samples"), n_samples=40)
    for v, a in omics.views.items():
        obs = ~np.isnan(a)
        for part in (out.mean[v], out.lower[v], out.upper[v], *out.samples[v]):
            np.testing.assert_array_equal(part[obs], a[obs])
        assert np.isfinite(out.mean[v]).all() and (out.lower[v] <= out.upper[v]).all()
        assert (out.std[v][obs] == 0).all() and (out.std[v][~obs] > 0).mean() > 0.9


def test_the_pyfunc_predicts_each_classic_model_from_its_own_code(checkpoints, omics, tmp_path):
    from mvimpute import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tracking.start_run("classic", "classic", tracking_uri=uri)
    model_uris = {name: tracking.log_model(run, path) for name, (_, path) in checkpoints.items()}
    tracking.end_run(run)
    frame = omics.subset(np.arange(20)).to_frame().reset_index(drop=True)
    frame.to_parquet(tmp_path / "in.parquet")
    script = (
        "import sys, mlflow, pandas as pd\n"
        "for name, uri in zip(sys.argv[2::2], sys.argv[3::2]):\n"
        "    out = pd.DataFrame(mlflow.pyfunc.load_model(uri).predict(pd.read_parquet(sys.argv[1])))\n"
        "    out.to_parquet(f'{name}.parquet')\n"
    )
    args = [x for name, u in model_uris.items() for x in (name, u)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "in.parquet"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name, (_, path) in checkpoints.items():
        got = pd.read_parquet(tmp_path / f"{name}.parquet")
        ref = Predictor.from_checkpoint(path, device="cpu").predict_frame(frame)
        np.testing.assert_allclose(got[list(frame.columns)].to_numpy(), ref[list(frame.columns)].to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("name", CLASSIC)
def test_the_batch_job_imputes_a_table_with_each_classic_model(ray_session, checkpoints, omics, tmp_path, name):  # noqa: ARG001
    from mvimpute.jobs.impute import impute_table

    frame = omics.to_frame().reset_index(drop=True)
    frame.insert(0, "sid", [f"r{i}" for i in np.random.default_rng(0).permutation(len(frame))])
    frame.to_parquet(tmp_path / "in.parquet", row_group_size=100, index=False)
    impute_table(
        tmp_path / "in.parquet",
        tmp_path / "out.parquet",
        checkpoint=checkpoints[name][1],
        id_column="sid",
        outputs=("interval",),
        n_samples=30,
        batch_size=128,
    )
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert out["sid"].tolist() == frame["sid"].tolist()
    cols = [c for c in frame.columns if c != "sid"]
    x, y = frame[cols].to_numpy(), out[cols].to_numpy()
    obs = ~np.isnan(x)
    np.testing.assert_array_equal(y[obs], x[obs])
    assert not np.isnan(y).any()
    assert (out[[f"{c}__lower" for c in cols]].to_numpy() <= out[[f"{c}__upper" for c in cols]].to_numpy()).all()
    ref = Predictor.from_checkpoint(checkpoints[name][1], device="cpu").predict_frame(frame[cols])
    np.testing.assert_allclose(y, ref[cols].to_numpy(), rtol=1e-6)


def test_the_endpoint_serves_each_classic_model(ray_session, checkpoints, omics):  # noqa: ARG001
    from ray import serve
    from test_platform import _free_port

    from mvimpute import endpoint

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        for name, (_, path) in checkpoints.items():
            args = {"checkpoint": str(path), "device": "cpu", "num_cpus": 0.25, "reload_interval_s": 0}
            serve.run(endpoint.build_app(args), name=f"classic-{name}", route_prefix=f"/{name}")
        rna = omics.views["rna"]
        rna = rna[~np.isnan(rna).all(1)][:3]  # a row must observe something: protein and counts are left out
        instances = [{"rna": [None if np.isnan(x) else float(x) for x in r], "protein": None} for r in rna]
        for name, (_, path) in checkpoints.items():
            body = json.dumps({"instances": instances, "return": ["mean", "interval"], "n_samples": 30}).encode()
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/{name}/impute", data=body, headers={"content-type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=120) as r:
                reply = json.loads(r.read())
            ref = Predictor.from_checkpoint(path, device="cpu")
            mean = ref.predict(ref.check_instances(instances)).mean
            got = np.array([p["mean"]["protein"] for p in reply["predictions"]])
            np.testing.assert_allclose(got, mean["protein"], rtol=1e-6)
            for p, row in zip(reply["predictions"], rna, strict=True):
                obs = ~np.isnan(row)
                np.testing.assert_array_equal(np.array(p["mean"]["rna"])[obs], row[obs])
                assert (np.array(p["lower"]["protein"]) <= np.array(p["upper"]["protein"])).all()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{name}/metadata", timeout=60) as r:
                meta = json.loads(r.read())
            assert (meta["training_rows"] is not None) == (name == "knn")
            assert meta["serving"]["max_training_rows"] == MAX_TRAINING_ROWS
    finally:
        serve.shutdown()
