"""An evaluation grid logged as one MLflow run: params, summary metrics, artifacts."""

import json

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import _validate_metric_name

import mvimpute as mvi
from mvimpute.evaluation import OUTPUT_FILES, run_evaluation, summary_metrics
from mvimpute.tracking import metric_key


def tiny_data():
    return mvi.load_dataset("synthetic-omics", n_samples=120, dims=(5, 4), seed=0)


def test_evaluation_is_logged_when_the_env_sets_a_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'track.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = run_evaluation(
        tiny_data(),
        models=["jpvae"],
        params=["jpvae.hidden=[16,16]", "jpvae.latent_dim=3"],
        epochs=2,
        baselines=["column-mean"],
        mechanisms=["mcar"],
        rates=[0.3],
        seeds=[0],
        n_samples=10,
        out_dir=tmp_path / "out",
        progress=False,
    )
    assert result.run_id is not None and result.tracking_uri == uri
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mvimpute-evaluate")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [result.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.name"] == "mvimpute.evaluate"

    p = run.data.params
    assert p["data"] == "in-memory" and p["data_samples"] == "120"
    assert p["models.jpvae.model"] == "jpvae" and p["models.jpvae.epochs"] == "2"
    assert p["models.jpvae.hidden"] == "[16, 16]" and p["models.jpvae.latent_dim"] == "3"
    assert (p["baselines"], p["mechanisms"], p["rates"], p["seeds"]) == ("column-mean", "mcar", "0.3", "0")
    assert p["n_samples"] == "10" and p["label"] == "None"

    m = run.data.metrics
    by_method = {r["method"]: r for r in result.rows}
    for meth in ("jpvae", "column-mean"):
        assert m[f"rmse/{meth}/mcar/0.3"] == pytest.approx(by_method[meth]["rmse"])
        assert m[f"fit_seconds/{meth}/mcar/0.3"] == pytest.approx(by_method[meth]["fit_seconds"])
    assert m["crps/jpvae/mcar/0.3"] == pytest.approx(by_method["jpvae"]["crps"])
    assert m["coverage_90/jpvae/mcar/0.3"] == pytest.approx(by_method["jpvae"]["coverage_90"])
    assert "coverage_90/column-mean/mcar/0.3" not in m  # no draws, no intervals
    assert m["wall_seconds"] == pytest.approx(result.wall_seconds)

    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert set(OUTPUT_FILES) | {"config.yaml"} <= names
    local = client.download_artifacts(result.run_id, "results.json", str(tmp_path / "dl"))
    assert json.loads(open(local).read()) == result.rows
    # artifacts live beside the SQLite file, not in the working directory's default ./mlruns
    assert any((tmp_path / "mlartifacts").rglob("calibration.png"))
    assert not (tmp_path / "mlruns").exists()


def test_no_tracking_uri_no_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = run_evaluation(
        tiny_data(), models=[], baselines=["column-mean"], mechanisms=["view"], rates=[0.5], seeds=[0],
        out_dir=tmp_path / "out", progress=False,
    )  # fmt: skip
    assert result.run_id is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no mlflow.db, no mlartifacts
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUT_FILES)


def test_summary_metrics_are_means_over_seeds():
    rows = [
        {"method": "knn", "mechanism": "mcar", "rate": 0.2, "seed": 0, "rmse": 1.0, "crps": float("nan")},
        {"method": "knn", "mechanism": "mcar", "rate": 0.2, "seed": 1, "rmse": 2.0},
        {"method": "knn", "mechanism": "view", "rate": 0.5, "seed": 0, "rmse": 5.0, "accuracy": 0.5},
    ]
    s = summary_metrics(rows)
    assert s == {"rmse/knn/mcar/0.2": 1.5, "rmse/knn/view/0.5": 5.0, "accuracy/knn/view/0.5": 0.5}


@pytest.mark.parametrize("name", ["rmse/my model (v2)/mcar/0.2", "crps/a*b/view/0.5", "x:y/é?/0.5"])
def test_metric_key_is_mlflow_legal(name):
    key = metric_key(name)
    _validate_metric_name(key)
    assert key.count("/") == name.count("/")
    assert metric_key("rmse/column-mean/mcar/0.2") == "rmse/column-mean/mcar/0.2"
