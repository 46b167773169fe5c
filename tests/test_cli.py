"""The `mvimpute` command line: datasets, fit → score → impute round trip, clear errors."""

from __future__ import annotations

import json
import re
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import mvimpute as mvi
from mvimpute.cli import app

runner = CliRunner()


def plain(text: str) -> str:
    """Output without rich box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "model.pt"
    res = invoke("fit", "--data", "digits-halves", "--model", "jpvae", "--epochs", 2,
                 "--out", out, "--param", "hidden=[32,32]", "--param", "latent_dim=4", "--param", "batch_size=512",
                 "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert re.search(r"best epoch \d+ of 2 \(val_crps \d", res.output), res.output  # the default selection score
    assert len(re.findall(r"^epoch \d/2 ", res.output, flags=re.M)) == 2, res.output  # a line per epoch off a terminal
    assert re.search(r"in \d+\.\d+ s", res.output)
    return out


def test_console_script_points_at_app():
    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == "mvimpute"]
    assert eps and eps[0].value == "mvimpute.cli:app"


def test_datasets_lists_views_widths_likelihoods():
    res = invoke("datasets")
    assert res.exit_code == 0, res.output
    for name in mvi.DATASETS:
        data = mvi.load_dataset(name)
        assert name in res.output
        for v in data.view_names:
            assert re.search(rf"{v}\s+{data.dims[v]}\s+{data.likelihoods[v]}", res.output), (name, v)


def test_fit_saves_a_loadable_model_with_the_given_params(model_path):
    imp = mvi.MultiViewImputer.load(model_path)
    assert imp.model_name == "jpvae"
    assert tuple(imp.model_params["hidden"]) == (32, 32) and imp.model_params["latent_dim"] == 4
    assert imp.train_config.epochs == 2 and imp.train_config.batch_size == 512
    assert len(imp.history_) == 2
    assert imp.schema_.dims == {"top": 32, "bottom": 32}
    assert imp.schema_.likelihoods == {"top": "bounded", "bottom": "bounded"}  # grey levels in [0, 1]


@pytest.mark.parametrize("mechanism", ["view", "mcar"])
def test_score_prints_a_table_and_writes_json(model_path, tmp_path, mechanism):
    out = tmp_path / "scores.json"
    res = invoke("score", "--checkpoint", model_path, "--data", "digits-halves", "--mechanism", mechanism,
                 "--rate", 0.5, "--seed", 0, "--test-frac", 0.2, "--n-samples", 10, "--json", out,
                 "--device", "cpu")
    assert res.exit_code == 0, res.output
    for word in ("rmse", "mae", "coverage_90", "width_50", "crps", "top", "bottom"):
        assert word in res.output
    report = json.loads(out.read_text())
    assert report["mechanism"] == mechanism and report["rate"] == 0.5
    metrics = report["metrics"]
    # the same numbers as the library call on the same split and masking
    imp = mvi.MultiViewImputer.load(model_path)
    _, test = mvi.load_dataset("digits-halves").split(0.2, 0)
    hide = mvi.masking.drop_views if mechanism == "view" else mvi.masking.mcar
    c = hide(test, 0.5, seed=0)
    ref = mvi.score(imp, c.truth, c.data, n_samples=0)
    assert metrics["n_hidden"] == ref["n_hidden"]
    assert metrics["rmse"] == pytest.approx(ref["rmse"], rel=1e-5)
    assert 0 <= metrics["coverage_90"] <= 1 and metrics["width_90"] >= metrics["width_50"]
    assert f"{metrics['rmse']:.4g}" in res.output
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_impute_round_trip(model_path, tmp_path, suffix):
    _, test = mvi.load_dataset("digits-halves").split(0.2, 0)
    small = test.subset(np.arange(40))
    c = mvi.masking.corrupt(small, view_rate=0.4, mcar_rate=0.2, seed=1)
    wide = c.data.to_frame().reset_index(drop=True)
    wide.insert(0, "sample_id", [f"id{i:03d}" for i in range(len(wide))])
    cols = list(wide.columns)
    wide = wide[[cols[0], *cols[1:][::-1]]]  # feature columns in a different order than in training
    wide.loc[5, [c for c in wide.columns if c != "sample_id"]] = np.nan  # a sample with nothing observed
    src, dst = tmp_path / f"in{suffix}", tmp_path / "sub" / f"out{suffix}"
    if suffix == ".csv":
        wide.to_csv(src, index=False)
    else:
        wide.to_parquet(src, index=False)
    assert wide.drop(columns="sample_id").isna().to_numpy().any()
    res = invoke("impute", "--checkpoint", model_path, "--input", src, "--output", dst,
                 "--id-column", "sample_id", "--device", "cpu")
    assert res.exit_code == 0, res.output
    got = pd.read_csv(dst) if suffix == ".csv" else pd.read_parquet(dst)
    assert list(got.columns) == list(wide.columns)
    assert len(got) == len(wide)
    assert got["sample_id"].tolist() == wide["sample_id"].tolist()
    x, y = wide.drop(columns="sample_id").to_numpy(float), got.drop(columns="sample_id").to_numpy(float)
    assert not np.isnan(y).any()
    obs = ~np.isnan(x)
    np.testing.assert_array_equal(y[obs], x[obs])
    assert ((y[~obs] >= 0) & (y[~obs] <= 1)).all()  # bernoulli views: probabilities
    # the same as the library's transform
    imp = mvi.MultiViewImputer.load(model_path)
    ref = imp.transform(wide.drop(columns="sample_id"))
    np.testing.assert_allclose(y, ref[wide.columns[1:]].to_numpy(), rtol=1e-6, atol=1e-7)
    # no temp file left; the monitoring summary beside the table
    assert sorted(p.name for p in dst.parent.iterdir()) == sorted([dst.name, "out.monitoring.json"])
    assert "monitoring summary → " in res.output


# ----------------------------------------------------------------------------- errors


def test_bad_param_names_it(tmp_path):
    out = tmp_path / "m.pt"
    res = invoke("fit", "--data", "digits-halves", "--epochs", 1, "--out", out, "--param", "bogus_knob=3")
    assert res.exit_code != 0
    assert "bogus_knob" in plain(res.output) and "--param" in plain(res.output)
    assert not out.exists()
    res = invoke("fit", "--data", "digits-halves", "--epochs", 1, "--out", out, "--param", "hidden")
    assert res.exit_code == 2 and "'hidden' is not key=value" in plain(res.output)
    res = invoke("fit", "--data", "digits-halves", "--epochs", 1, "--out", out, "--param", "alpha=1.5")
    assert res.exit_code == 2 and "alpha" in plain(res.output)
    res = invoke("fit", "--data", "digits-halves", "--epochs", 1, "--out", out, "--param", "epochs=3")
    assert res.exit_code == 2 and "--epochs" in plain(res.output)


def test_unknown_dataset_and_model(tmp_path):
    res = invoke("fit", "--data", "mnist-quarters", "--epochs", 1, "--out", tmp_path / "m.pt")
    assert res.exit_code == 2
    text = plain(res.output)
    assert "mnist-quarters" in text and "digits-halves" in text
    res = invoke("fit", "--data", "digits-halves", "--model", "gan", "--out", tmp_path / "m.pt")
    assert res.exit_code == 2 and "'gan'" in plain(res.output)


def test_missing_files(tmp_path, model_path):
    res = invoke("score", "--checkpoint", tmp_path / "nope.pt", "--data", "digits-halves")
    assert res.exit_code == 2 and "nope.pt" in plain(res.output)
    res = invoke("impute", "--checkpoint", model_path, "--input", tmp_path / "missing.csv",
                 "--output", tmp_path / "o.csv")
    assert res.exit_code == 2 and "missing.csv" in plain(res.output)
    not_a_model = tmp_path / "model.pt"
    not_a_model.write_text("hello")
    res = invoke("score", "--checkpoint", not_a_model, "--data", "digits-halves")
    assert res.exit_code == 2 and "model.pt" in plain(res.output)


def test_impute_bad_table(tmp_path, model_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"top:px00": [0.0, np.nan], "stray": [1, 2]}).to_csv(src, index=False)
    res = invoke("impute", "--checkpoint", model_path, "--input", src, "--output", tmp_path / "o.csv")
    assert res.exit_code == 2 and "stray" in plain(res.output)
    res = invoke("impute", "--checkpoint", model_path, "--input", src, "--output", tmp_path / "o.csv",
                 "--id-column", "sample")
    assert res.exit_code == 2 and "sample" in plain(res.output)
    pd.DataFrame({"top:px00": [0.0, np.nan], "rna:g1": [1, 2]}).to_csv(src, index=False)
    res = invoke("impute", "--checkpoint", model_path, "--input", src, "--output", tmp_path / "o.csv")
    assert res.exit_code == 2 and "rna" in plain(res.output)
    res = invoke("impute", "--checkpoint", model_path, "--input", src, "--output", tmp_path / "o.xlsx")
    assert res.exit_code == 2 and "o.xlsx" in plain(res.output)
    assert not (tmp_path / "o.csv").exists()


def test_score_bad_rate(model_path):
    res = invoke("score", "--checkpoint", model_path, "--data", "digits-halves", "--rate", 1.5)
    assert res.exit_code == 2 and "rate" in plain(res.output)


def test_train_rejects_a_bad_spec_before_starting(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("id_column: sample\nviews:\n  rna: {path: nowhere.parquet}\n")
    result = runner.invoke(app, ["train", "--data", str(spec), "--no-gpu"], terminal_width=300)
    assert result.exit_code != 0
    assert "nowhere.parquet" in result.output


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_runs_a_tiny_grid_and_logs_it(tmp_path):
    out, uri = tmp_path / "eval", f"sqlite:///{tmp_path / 'track.db'}"
    res = invoke("evaluate", "--data", "digits-halves", "--label", "label", "--models", "jpvae",
                 "--param", "jpvae.hidden=[16,16]", "--param", "jpvae.latent_dim=3", "--param", "jpvae.batch_size=256",
                 "--baselines", "column-mean", "--mechanisms", "view", "--rates", "0.5", "--seeds", 0,
                 "--epochs", 1, "--n-samples", 5, "--out", out, "--tracking-uri", uri)
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["mechanism"], r["rate"], r["seed"]) for r in rows] == [
        ("column-mean", "view", 0.5, 0), ("jpvae", "view", 0.5, 0)]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    for name in ("results.md", "score_vs_rate.png", "calibration.png"):
        assert (out / name).is_file()
    text = res.output
    assert "method=jpvae" in text and "method=column-mean" in text  # the progress bar names the method per cell
    jp = rows[1]
    assert f"jpvae view rate 0.5 seed 0: rmse {jp['rmse']:.4g}" in text
    assert f"{jp['rmse']:.3f} ± 0.000" in text  # the results table
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", text).group(1)
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(run_id)
    assert run.data.params["data"] == "digits-halves" and run.data.params["label"] == "label"
    assert run.data.metrics["accuracy/jpvae/view/0.5"] == pytest.approx(jp["accuracy"])


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--mechanisms", "mcar,mnar"], "'mnar'"),
        (["--models", "jpvae,gan"], "'gan'"),
        (["--baselines", "knn,softimpute"], "softimpute"),
        (["--param", "jpvae.bogus_knob=3"], "bogus_knob"),
        (["--param", "vae.hidden=[8]"], "vae.hidden"),
        (["--rates", "0.2,lots"], "'lots'"),
        (["--rates", "1.5"], "1.5"),
        (["--data", "mnist-quarters"], "mnist-quarters"),
        (["--label", "colour"], "colour"),
    ],
)
def test_evaluate_bad_input_names_it_and_fits_nothing(tmp_path, args, named):
    out = tmp_path / "eval"
    res = runner.invoke(app, ["evaluate", "--out", str(out), "--epochs", "1", *args], terminal_width=300)
    assert res.exit_code == 2, res.output
    assert named in plain(res.output)
    assert not out.exists()
