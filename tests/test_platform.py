"""The cluster platform: Ray Data ingest, Ray Train (DDP, checkpoints, failure recovery, resume), MLflow.

One local Ray session (2 CPUs) and one real `mlflow server` (SQLite backend, 127.0.0.1) serve the
whole module. Training runs are small (digits-halves, a small net, a few epochs).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fitted import as_scored_in_training  # beside this file

import mvimpute as mvi
from mvimpute.baselines import mean_imputer
from mvimpute.data.multiview import MultiViewData, ViewSchema
from mvimpute.data.ray_data import read_dataset, read_spec
from mvimpute.data.spec import validate_spec
from mvimpute.engine.prepare import build_validation_set
from mvimpute.engine.runner import train_distributed
from mvimpute.engine.worker import FAULT_ENV
from mvimpute.jobs.train import train_main
from mvimpute.training import TrainConfig, validation_score

# conditional="prior": the imputer rebuilt from the checkpoint scores exactly what the workers reported
SMALL = dict(prior="orthogonal", conditional="prior", latent_dim=8, hidden=[128], kl_cycles=0)
TINY = {**SMALL, "hidden": [32]}
EPOCHS = 8
TRAIN = dict(epochs=EPOCHS, batch_size=32, lr=5e-3, patience=None, val_frac=0.15, seed=0, progress=False)


# ----------------------------------------------------------------------------- fixtures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_process(tmp_path_factory):
    """A real MLflow server with a SQLite backend, started early (it boots while other tests run)."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe) if exe.exists() else "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")]
    cmd += ["--workers", "1"]
    log = open(root / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    yield proc, f"http://127.0.0.1:{port}", root
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def mlflow_server(mlflow_process):
    proc, uri, root = mlflow_process
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return uri
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server did not come up: {(root / 'server.log').read_text()[-2000:]}")


@pytest.fixture(scope="module", autouse=True)
def _boot_mlflow_early(mlflow_process):
    yield


@pytest.fixture(scope="module")
def omics_tables(tmp_path_factory):
    """Two views keyed by sample id, as Parquet (a folder of two files) and CSV; some samples lack a view."""
    root = tmp_path_factory.mktemp("omics")
    rng = np.random.default_rng(1)
    n = 120
    ids = np.array([f"id{i:04d}" for i in range(n)])
    rna = pd.DataFrame(rng.normal(size=(n, 4)), columns=[f"g{j}" for j in range(4)])
    rna.iloc[3, 1] = np.nan  # a missing entry inside an observed view
    counts = pd.DataFrame(rng.poisson(4, size=(n, 2)).astype(float), columns=["c0", "c1"])
    has = {"rna": np.arange(n) % 5 != 0, "counts": np.arange(n) % 3 != 1}
    frames = {"rna": rna, "counts": counts}
    tables = {}
    for v, f in frames.items():
        t = f[has[v]].copy()
        t.insert(0, "sample_id", ids[has[v]])
        tables[v] = t.sample(frac=1.0, random_state=2)  # files need not be in id order
    tables["rna"].to_parquet(root / "rna.parquet", index=False)  # for the bad-spec cases
    (root / "rna").mkdir()
    half = len(tables["rna"]) // 2
    tables["rna"].iloc[:half].to_parquet(root / "rna" / "part0.parquet", index=False)
    tables["rna"].iloc[half:].to_parquet(root / "rna" / "part1.parquet", index=False)
    tables["counts"].to_csv(root / "counts.csv", index=False)
    spec = {
        "name": "toy-omics",
        "id_column": "sample_id",
        "views": {
            "rna": {"path": "rna", "columns": ["g0", "g1", "g2", "g3"]},
            "counts": {"path": "counts.csv"},
        },
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    keep = has["rna"] | has["counts"]
    expected = {}
    for v, f in frames.items():
        a = f.to_numpy(dtype=float).copy()
        a[~has[v]] = np.nan
        expected[v] = a[keep]
    return root, ids[keep], expected


# ----------------------------------------------------------------------------- bad specs


def _write(root: Path, name: str, spec: dict) -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    "views, message",
    [
        ({"rna": {"path": "rna.parquet", "columns": ["g0", "nope"]}}, "unknown column"),
        ({"rna": {"path": "rna.parquet", "columns": []}}, "no columns"),
        ({"rna": {"path": "rna.parquet", "prefix": "zz"}}, "has no columns"),
        ({"rna": {"path": "missing.parquet"}}, "no such file"),
        ({"rna": {"path": "garbage.parquet"}}, "cannot read"),
        ({"rna": {"path": "rna.parquet", "likelihood": "poisson", "scaling": "standard"}}, "does not fit"),
        ({"rna": {"path": "rna.parquet", "colums": ["g0"]}}, "colums"),
    ],
)
def test_bad_spec_is_a_value_error_before_training(omics_tables, tmp_path, views, message):
    root, _, _ = omics_tables
    (root / "garbage.parquet").write_bytes(b"not a parquet file")
    path = _write(root, f"bad_{abs(hash(message))}.yaml", {"id_column": "sample_id", "views": views})
    with pytest.raises(ValueError, match=message) as err:
        train_distributed(path, "jpvae", SMALL, TRAIN, storage_path=tmp_path / "runs")
    assert "rna" in str(err.value) or "colums" in str(err.value)
    assert not (tmp_path / "runs").exists()  # no run was started


def test_bad_spec_names_the_missing_id_column_and_the_layout(omics_tables):
    root, _, _ = omics_tables
    with pytest.raises(ValueError, match="id column 'patient'"):
        validate_spec(_write(root, "noid.yaml", {"id_column": "patient", "views": {"rna": {"path": "rna.parquet"}}}))
    with pytest.raises(ValueError, match="needs columns or prefix"):
        validate_spec({"table": "rna.parquet", "views": {"rna": {}}, "base_dir": str(root)})
    with pytest.raises(ValueError, match="no such file"):
        validate_spec(root / "nothing.yaml")
    with pytest.raises(ValueError, match="unknown model"):
        train_distributed(root / "spec.yaml", "nope")
    with pytest.raises(ValueError, match="train config has no field"):
        train_distributed(root / "spec.yaml", "jpvae", SMALL, {"epochz": 3})


# ----------------------------------------------------------------------------- ingest


def test_per_view_parquet_and_csv_tables_align_on_the_id(ray_session, omics_tables):  # noqa: F811
    root, ids, expected = omics_tables
    rmv = read_spec(root / "spec.yaml")
    rmv.dataset = rmv.dataset.materialize()
    got = rmv.to_multiview()
    assert got.index.tolist() == sorted(ids.tolist())
    order = np.argsort(ids)
    for v, a in expected.items():
        np.testing.assert_array_equal(got.masks[v], ~np.isnan(a[order]), err_msg=v)
        np.testing.assert_allclose(got.views[v], a[order], equal_nan=True, err_msg=v)
    assert got.columns == {"rna": ["g0", "g1", "g2", "g3"], "counts": ["c0", "c1"]}

    # scaling statistics from the streaming aggregation = ViewSchema.fit on the collected data
    schema, n = rmv.fit_schema()
    assert n == len(ids)
    ref = ViewSchema.fit(MultiViewData(got.views, likelihoods=schema.likelihoods, columns=got.columns))
    assert schema.likelihoods == {"rna": "gaussian", "counts": "negative_binomial"}  # inferred while streaming
    for v in schema.columns:
        assert schema.scalers[v].kind == ref.scalers[v].kind
        if ref.scalers[v].kind != "none":
            np.testing.assert_allclose(schema.scalers[v].mean, ref.scalers[v].mean, rtol=1e-10)
            np.testing.assert_allclose(schema.scalers[v].std, ref.scalers[v].std, rtol=1e-10)

    # tensor batches: scaled values with missing → 0, masks 1 = observed, ids kept
    batches = list(rmv.tensor_dataset(schema, with_id=True).iter_batches(batch_size=1000, batch_format="numpy"))
    tb = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    o = np.argsort(tb["id"])
    want = schema.to_batch(got)
    for v in schema.columns:
        np.testing.assert_array_equal(tb[f"m:{v}"][o], want.masks[v].numpy())
        np.testing.assert_allclose(tb[f"x:{v}"][o], want.values[v].numpy(), rtol=1e-6, atol=1e-6)


def test_wide_csv_table_with_prefixes_and_column_lists(ray_session, tmp_path):  # noqa: F811
    rng = np.random.default_rng(3)
    wide = pd.DataFrame(rng.normal(size=(40, 5)), columns=["top_a", "top_b", "b0", "b1", "label"])
    wide.insert(0, "sid", np.arange(40))  # integer ids are read as strings
    wide.iloc[2, 2] = np.nan
    wide.iloc[5, 3:5] = np.nan
    wide.to_csv(tmp_path / "wide.csv", index=False)
    spec = {
        "id_column": "sid",
        "table": "wide.csv",
        "views": {"top": {"prefix": "top_"}, "bottom": {"columns": ["b0", "b1"]}},
    }
    got = read_spec(_write(tmp_path, "wide.yaml", spec)).to_multiview()
    assert sorted(got.index.tolist()) == sorted(str(i) for i in range(40))
    order = np.argsort(np.array([str(i) for i in range(40)]))
    np.testing.assert_allclose(got.views["top"], wide[["top_a", "top_b"]].to_numpy()[order], equal_nan=True)
    np.testing.assert_allclose(got.views["bottom"], wide[["b0", "b1"]].to_numpy()[order], equal_nan=True)
    wide["b0"] = wide["b0"].astype(object)
    wide.loc[30, "b0"] = "oops"
    wide.to_csv(tmp_path / "bad.csv", index=False)
    spec["table"] = "bad.csv"
    with pytest.raises(ValueError, match="b0"):
        read_spec(_write(tmp_path, "bad.yaml", spec)).fit_schema()


# ----------------------------------------------------------------------------- training + tracking


@pytest.fixture(scope="module")
def tracked_run(ray_session, mlflow_server, tmp_path_factory):  # noqa: F811
    """One 2-worker CPU run on digits-halves through the train job, tracked on the MLflow server."""
    root = tmp_path_factory.mktemp("train")
    config = {
        "data": "digits-halves",
        "model": "jpvae",
        "model_params": SMALL,
        "train": TRAIN,
        "cluster": {"num_workers": 2, "storage_path": str(root / "ray")},  # default resources
        "mlflow": {"experiment": "platform-test", "registered_model_name": "digits-jpvae", "n_draws": 20},
    }
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    t0 = time.perf_counter()
    out = train_main(path, ["train.lr=0.004"], tracking_uri=mlflow_server, run_name="digits-2w")
    out.seconds = time.perf_counter() - t0
    return out


def test_two_worker_run_beats_column_mean_and_its_checkpoint_rebuilds_the_imputer(tracked_run):
    result = tracked_run.result
    assert [h["epoch"] for h in result.history] == list(range(1, EPOCHS + 1))
    assert result.attempts == [0]
    cfg = TrainConfig(**TRAIN)
    data = read_dataset("digits-halves")
    train, val = data.split(cfg.val_frac, cfg.seed)
    imp = mvi.MultiViewImputer.load(result.checkpoint_path)
    val_set = build_validation_set(val, imp.schema_, cfg)
    ours = validation_score(as_scored_in_training(imp.model_), val_set)["val_rmse"]
    # the checkpoint holds the best epoch's weights: its score is the one the workers reported
    assert math.isclose(ours, result.history[result.best_epoch - 1]["val_rmse"], rel_tol=1e-5), ours
    final = validation_score(imp.model_, val_set)["val_rmse"]
    assert final <= ours * 1.01, (final, ours)  # the post-fit location spread does not make it worse
    train_scaled = imp.schema_.to_batch(train.to_multiview()).to_arrays()
    filled = mean_imputer().fit(train_scaled).transform(val_set.corrupted.to_arrays())
    err = np.concatenate([(filled[v] - val_set.truth.values[v].numpy())[val_set.hidden[v].numpy()] for v in filled])
    base = float(np.sqrt(np.mean(err**2)))
    assert ours < 0.93 * base, (ours, base)
    assert imp.model_.config.latent_dim == SMALL["latent_dim"]
    again = mvi.MultiViewImputer.load(result.checkpoint_file)
    frame = mvi.masking.hide_view(val.to_multiview(), "bottom").data.to_frame()
    pd.testing.assert_frame_equal(imp.transform(frame), again.transform(frame))


def test_mlflow_run_has_params_metrics_figures_and_a_registered_pyfunc(tracked_run, mlflow_server):
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    run = client.get_run(tracked_run.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model"] == "jpvae" and params["train.epochs"] == str(EPOCHS) and params["train.lr"] == "0.004"
    assert params["model_params.latent_dim"] == "8" and params["cluster.num_workers"] == "2"
    for key in ("val_rmse", "train_loss", "val_rmse_top"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(set(steps)) == list(range(1, EPOCHS + 1)), (key, steps)  # epochs numbered from 1
    plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"training_curves.png", "posterior_draws.png", "latent_cross_correlation.png"} <= plots
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}

    assert tracked_run.model_uri == "models:/digits-jpvae@champion"  # the alias serving loads
    version = client.get_model_version_by_alias("digits-jpvae", "champion")
    assert version.run_id == run.info.run_id
    assert max(int(v.version) for v in client.search_model_versions("name='digits-jpvae'")) == int(version.version)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server)
    try:
        model = mlflow.pyfunc.load_model(tracked_run.model_uri)
    finally:
        mlflow.set_tracking_uri(previous)
    data = mvi.load_dataset("digits-halves").subset(np.arange(12))
    frame = mvi.masking.hide_view(data.subset(np.arange(6)), "bottom").data.to_frame()
    frame = pd.concat([frame, mvi.masking.hide_view(data.subset(np.arange(6, 12)), "top").data.to_frame()])
    predicted = model.predict(frame)
    expected = mvi.MultiViewImputer.load(tracked_run.checkpoint_path).transform(frame)
    np.testing.assert_allclose(predicted.to_numpy(), expected.to_numpy(), rtol=1e-6, atol=1e-7)
    assert list(predicted.columns) == list(frame.columns)
    assert not predicted.isna().any().any()


# ----------------------------------------------------------------------------- failures and resume


@pytest.fixture(scope="module")
def failed_once(ray_session, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("fault")
    marker = root / "failed.marker"
    os.environ[FAULT_ENV] = f"1:0:{marker}"  # the worker fails once, after epoch 1
    try:
        result = train_distributed(
            "digits-halves",
            "jpvae",
            TINY,
            {**TRAIN, "epochs": 3},
            num_workers=1,
            storage_path=root / "ray",
            run_name="fails-once",
            max_failures=1,
            preview_rows=0,
        )
    finally:
        del os.environ[FAULT_ENV]
    return result, marker


def test_worker_crash_resumes_from_the_last_checkpoint(failed_once):
    result, marker = failed_once
    assert marker.exists(), "the injected failure did not happen"
    assert result.attempts == [0, 1]  # the second attempt started from the epoch-0 checkpoint
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


def test_stopped_run_resumes_from_its_checkpoint(ray_session, failed_once, tmp_path):  # noqa: F811
    first, _ = failed_once
    resumed = train_distributed(
        "digits-halves",
        "jpvae",
        None,
        {**TRAIN, "epochs": 4},
        num_workers=1,
        storage_path=tmp_path / "ray",
        resume_from=first.checkpoint_path,
        preview_rows=0,
    )
    assert [h["epoch"] for h in resumed.history] == list(range(1, 5))
    assert resumed.history[:3] == first.history
    assert resumed.attempts == [0, 1, 3]
    before = torch.load(first.checkpoint_file, weights_only=True)["loop"]["optimizer"]["state"]
    assert before, "the optimiser state travels in the checkpoint"
