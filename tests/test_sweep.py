"""Sweeps with Ray Tune, and the shared setup they rest on: the streamed scaling moments, one
validation split for `fit` and Ray Train, the search-space schema, and real sweeps on 2 CPUs.

Sweeps are tiny (digits-halves, a 32-unit net, 3 epochs) on the session's 2-CPU Ray.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import mvimpute as mvi
from mvimpute.data.multiview import MultiViewData
from mvimpute.data.ray_data import RayMultiView
from mvimpute.training import TrainConfig, make_validation_set, validation_score

ROOT = Path(__file__).resolve().parents[1]
TINY_JPVAE = dict(prior="orthogonal", conditional="prior", latent_dim=4, hidden=[32], kl_cycles=0)
TINY_TAE = dict(latent_dim=4, prior_latent_dim=2, hidden=32, prior_hidden=16)
EPOCHS = 3


# ----------------------------------------------------------------------------- streamed moments


def test_streamed_scaling_moments_match_numpy_on_the_whole_table(ray_session):
    rng = np.random.default_rng(5)
    n = 3000
    gauss = rng.normal(3.0, 2.5, size=(n, 4)) * np.array([1.0, 10.0, 0.1, 1.0])
    gauss[rng.random(gauss.shape) < 0.3] = np.nan
    counts = rng.poisson(4.0, size=(n, 3)).astype(float)
    counts[rng.random(counts.shape) < 0.2] = np.nan
    counts[np.isnan(gauss).all(1) & np.isnan(counts).all(1), 0] = 1.0  # no empty rows
    data = MultiViewData({"g": gauss, "c": counts}, likelihoods={"g": "gaussian", "c": "gaussian"})
    rmv = RayMultiView.from_multiview(data, num_blocks=7)
    rmv.scalings = {"c": "log1p"}
    schema, rows = rmv.fit_schema()
    assert rows == n
    sg, sc = schema.scalers["g"], schema.scalers["c"]
    np.testing.assert_allclose(sg.mean, np.nanmean(gauss, 0), rtol=1e-10)
    np.testing.assert_allclose(sg.std, np.nanstd(gauss, 0, ddof=1), rtol=1e-10)
    logc = np.log1p(counts)
    np.testing.assert_allclose(sc.mean, np.nanmean(logc, 0), rtol=1e-10)
    np.testing.assert_allclose(sc.std, np.nanstd(logc, 0, ddof=1), rtol=1e-10)


# ----------------------------------------------------------------------------- one validation split


def test_fit_and_the_ray_train_runner_hold_out_the_same_validation_samples(ray_session):
    from mvimpute.engine.prepare import build_validation_set, prepare_data

    data = mvi.load_dataset("digits-halves")
    train = dict(epochs=1, batch_size=64, val_frac=0.15, seed=3, progress=False)
    imp = mvi.MultiViewImputer("jpvae", **TINY_JPVAE, **train).fit(data)
    cfg = TrainConfig(**train)
    prepared = prepare_data("digits-halves", cfg)
    ray_val = build_validation_set(prepared.val, prepared.schema, cfg)
    # the same samples, in the same order
    assert [str(i) for i in imp.validation_index_] == [str(i) for i in ray_val.truth.index]
    assert 0.1 < len(imp.validation_index_) / data.n_samples < 0.2
    # the same scaling (fitted on the same training rows: streamed on Ray, in memory in fit)
    assert prepared.schema.likelihoods == imp.schema_.likelihoods
    for v in data.views:
        ray_s, fit_s = prepared.schema.scalers[v], imp.schema_.scalers[v]
        assert ray_s.kind == fit_s.kind
        if fit_s.mean is not None:
            np.testing.assert_allclose(ray_s.mean, fit_s.mean, rtol=1e-9)
            np.testing.assert_allclose(ray_s.std, fit_s.std, rtol=1e-9)
    # the same entries hidden: fit's validation set, rebuilt from its rows, equals the runner's
    pos = {str(i): k for k, i in enumerate(data.index)}
    rows = np.array([pos[str(i)] for i in imp.validation_index_])
    ours = make_validation_set(imp.schema_.to_batch(data.subset(rows)), cfg)
    for v in data.views:
        assert np.array_equal(ours.hidden[v].numpy(), ray_val.hidden[v].numpy())
        np.testing.assert_allclose(ours.truth.values[v].numpy(), ray_val.truth.values[v].numpy(), atol=1e-6)
    assert prepared.n_train == data.n_samples - len(rows)


# ----------------------------------------------------------------------------- the search-space schema


@pytest.mark.parametrize("model", ["tae", "jpvae", "mvae", "miwae"])
def test_shipped_search_spaces_load(model):
    from mvimpute.engine.search import load_space

    space = load_space(ROOT / "tune_spaces" / f"{model}.yaml", model)
    assert "train.lr" in space.swept()
    if model == "tae":
        assert {"model_params.C", "model_params.lam", "model_params.warmup_end"} <= set(space.swept())
        assert {"model_params.C", "model_params.lam", "train.lr"} <= set(space.log_scale())
    if model == "jpvae":
        assert {"model_params.alpha", "model_params.prior"} <= set(space.swept())


@pytest.mark.parametrize(
    ("body", "culprit"),
    [
        ({"model_params": {"Cee": {"loguniform": [1, 50]}}}, "model_params.Cee"),
        ({"model_params": {"C": {"log_uniform": [1, 50]}}}, "model_params.C"),
        ({"model_params": {"lam": {"loguniform": [0, 16]}}}, "model_params.lam"),
        ({"model_params": {"C": {"uniform": [50, 1]}}}, "model_params.C"),
        ({"model_params": {"C": {"uniform": [1, 2, 3]}}}, "model_params.C"),
        ({"model_params": {"noise": ["inferred", "fixed"]}}, "model_params.noise"),
        ({"model_params": {"noise": {"choice": ["inferred", "bogus"]}}}, "noise"),
        ({"train": {"seed": {"randint": [0, 10]}}}, "train.seed"),
        ({"train": {"lr_rate": {"loguniform": [1e-4, 1e-2]}}}, "train.lr_rate"),
        ({"trian": {"lr": {"loguniform": [1e-4, 1e-2]}}}, "trian"),
        ({"model": "jpvae", "model_params": {"alpha": {"uniform": [0.5, 0.9]}}}, "jpvae"),
    ],
)
def test_a_malformed_search_space_is_rejected_naming_the_key(tmp_path, body, culprit):
    from mvimpute.engine.search import load_space

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(ValueError, match=culprit.replace(".", r"\.")):
        load_space(path, "tae")


def test_the_tune_command_rejects_a_malformed_space_before_any_trial(tmp_path):
    from typer.testing import CliRunner

    from mvimpute.cli import app

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"model_params": {"alpha": {"uniform": [0.5, 1.5]}}}))
    out = CliRunner().invoke(app, ["tune", "--model", "jpvae", "--space", str(path), "--no-tracking"])
    assert out.exit_code == 2, out.output
    assert "alpha" in out.output and "sweep" not in out.output


def test_sweep_resources_leave_a_cpu_to_ray_data():
    from mvimpute.engine.resources import ResourceRequestError, plan_sweep_resources

    trial, worker, c = plan_sweep_resources(1, None, 4, {"CPU": 2.0})
    assert c == 1 and 2.0 - c * (trial["CPU"] + worker["CPU"]) >= 1.0
    trial, worker, c = plan_sweep_resources(1, 2, 4, {"CPU": 2.0})
    assert c == 2 and 2.0 - c * (trial["CPU"] + worker["CPU"]) >= 1.0 - 1e-9
    with pytest.raises(ResourceRequestError, match="--max-concurrent-trials"):
        plan_sweep_resources(1, 3, 4, {"CPU": 2.0})


# ----------------------------------------------------------------------------- real sweeps


def _space(tmp_path: Path, name: str, body: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return path


def _jpvae_sweep_config(root: Path, name: str) -> tuple[dict, str]:
    """4 JPVAE trials, random search over a grid with a clearly bad learning rate, ASHA."""
    space = _space(
        root,
        "space.yaml",
        {"model_params": {"alpha": {"uniform": [0.5, 0.99]}}, "train": {"lr": {"grid": [5e-3, 1e-7]}}},
    )
    config = {
        "data": "digits-halves",
        "model": "jpvae",
        "model_params": TINY_JPVAE,
        # RMSE selection: deterministic, so the champion's checkpoint can be re-scored exactly below
        "train": {"epochs": EPOCHS, "batch_size": 64, "patience": None, "val_frac": 0.15, "val_score": "rmse"},
        "cluster": {"storage_path": str(root / "ray")},
        "mlflow": {"experiment": "sweep-test"},
        "tune": {"space": str(space), "num_samples": 2, "search": "random", "scheduler": "asha", "name": name},
    }
    return config, f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def jpvae_sweep(ray_session, tmp_path_factory):
    """The 4-trial JPVAE sweep, each trial a Ray Train run (the runner of DDP trials)."""
    from mvimpute.jobs.tune import tune_main

    config, uri = _jpvae_sweep_config(tmp_path_factory.mktemp("jpvae-sweep"), "jp")
    return tune_main(config, ["tune.runner=train"], tracking_uri=uri, echo=False), uri


@pytest.mark.slow
def test_jpvae_sweep_asha_stops_the_bad_region_and_champion_is_the_best_trial(jpvae_sweep):
    from mlflow.tracking import MlflowClient

    out, uri = jpvae_sweep
    t = out.table
    assert len(t) == 4 and t["error"].isna().all(), t
    client = MlflowClient(uri)
    # one trial at a time (2 CPUs), in the order the search proposed them: ASHA sees a good trial first
    first_epoch = [client.get_metric_history(r, "val_rmse")[0].timestamp for r in t["mlflow_run_id"]]
    assert first_epoch == sorted(first_epoch), t.to_string()
    bad = t[t["train.lr"] < 1e-6]
    assert (~bad["completed"]).any() and (bad["epochs_run"] < EPOCHS).any(), t.to_string()  # ASHA stopped one
    done = t[t["completed"]]
    assert (done["epochs_run"] == EPOCHS).all()
    best = done.loc[done["score"].idxmin()]
    assert out.best_trial == best["trial_id"] and math.isclose(out.best_score, best["score"])
    assert best["train.lr"] > 1e-3

    version = client.get_model_version_by_alias("mvimpute-jpvae", "champion")
    assert out.model_uri == "models:/mvimpute-jpvae@champion"
    assert version.run_id == best["mlflow_run_id"]
    child = client.get_run(version.run_id)
    assert child.data.tags["mvimpute.trial_id"] == best["trial_id"]
    assert child.data.tags["mlflow.parentRunId"] == out.parent_run_id
    steps = [m.step for m in client.get_metric_history(version.run_id, "val_rmse")]
    assert sorted(steps) == list(range(1, EPOCHS + 1))
    assert client.get_run(version.run_id).data.params["train.lr"] == str(best["train.lr"])
    # only the best trial's model is registered; the stopped trials' runs are marked KILLED
    assert len(client.search_model_versions("name='mvimpute-jpvae'")) == 1
    for _, row in t[~t["completed"]].iterrows():
        assert client.get_run(row["mlflow_run_id"]).info.status == "KILLED"
    parent_files = {a.path for a in client.list_artifacts(out.parent_run_id, "sweep")}
    assert {"sweep/results.csv", "sweep/scores.png"} <= parent_files

    # the champion's checkpoint scores what its trial reported, on the sweep's validation split
    from mvimpute.engine.prepare import build_validation_set, prepare_data

    imp = mvi.MultiViewImputer.load(best["checkpoint"])
    cfg = imp.train_config
    prepared = prepare_data("digits-halves", cfg)
    from fitted import as_scored_in_training  # beside this file

    ours = validation_score(as_scored_in_training(imp.model_), build_validation_set(prepared.val, imp.schema_, cfg))[
        "val_rmse"
    ]
    assert math.isclose(ours, best["score"], rel_tol=1e-5), (ours, best["score"])


@pytest.fixture(scope="module")
def local_jpvae_sweep(ray_session, tmp_path_factory, jpvae_sweep):
    """The JPVAE sweep again with the default runner: one worker per trial, so each trial trains in its
    own process (`tune.runner=local`)."""
    from mvimpute.jobs.tune import tune_main

    out, _ = jpvae_sweep
    config, uri = _jpvae_sweep_config(tmp_path_factory.mktemp("jpvae-local-sweep"), "jpl")
    return tune_main(config, tracking_uri=uri, echo=False), out, uri


@pytest.mark.slow
def test_a_local_runner_sweep_scores_what_ray_train_trials_score_and_registers_its_champion(local_jpvae_sweep):
    from mlflow.tracking import MlflowClient

    local, train, uri = local_jpvae_sweep
    t = local.table
    assert len(t) == 4 and t["error"].isna().all(), t
    bad = t[t["train.lr"] < 1e-6]
    assert (~bad["completed"]).any() and (bad["epochs_run"] < EPOCHS).any(), t  # ASHA stopped one early
    # the same sampled values (same search seed) train to the same scores as under Ray Train
    key = ["model_params.alpha", "train.lr"]
    both = t[t["completed"]].merge(train.table[train.table["completed"]], on=key, suffixes=("_local", "_train"))
    assert len(both) >= 1, (t, train.table)
    for _, row in both.iterrows():
        assert math.isclose(row["score_local"], row["score_train"], rel_tol=1e-6), row
    done = t[t["completed"]]
    best = done.loc[done["score"].idxmin()]
    assert local.best_trial == best["trial_id"]
    version = MlflowClient(uri).get_model_version_by_alias("mvimpute-jpvae", "champion")
    assert version.run_id == best["mlflow_run_id"]
    assert best["checkpoint"].startswith(local.path) and "jpl-trials" not in best["checkpoint"]  # Tune's, no Train run
    imp = mvi.MultiViewImputer.load(best["checkpoint"])  # the trial's final checkpoint, kept by Tune
    assert imp.model_name == "jpvae" and len(imp.history_) == EPOCHS


def test_a_local_runner_sweep_refuses_several_workers_before_ray_starts(tmp_path):
    from mvimpute.jobs.tune import tune_main

    with pytest.raises(ValueError, match="num_workers must be 1"):
        tune_main({"data": "digits-halves", "model": "jpvae", "cluster": {"num_workers": 2}}, ["tune.runner=local"])


@pytest.fixture(scope="module")
def tae_sweep(ray_session, tmp_path_factory):
    """4 TAE trials with Optuna (FIFO: every trial runs to the end); the second trial to start fails
    (an interrupted trial), and the sweep is resumed: only that trial runs again."""
    import os

    from mvimpute.engine.search import FAULT_ENV
    from mvimpute.jobs.tune import tune_main

    root = tmp_path_factory.mktemp("tae-sweep")
    space = _space(
        root,
        "space.yaml",
        {
            "model_params": {
                "C": {"loguniform": [1, 50]},
                "lam": {"loguniform": [0.5, 16]},
                "warmup_start": {"uniform": [0.0, 0.2]},
                "warmup_end": {"uniform": [0.3, 0.6]},
                "noise": {"choice": ["inferred", "fixed"]},
            }
        },
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = {
        "data": "digits-halves",
        "model": "tae",
        "model_params": TINY_TAE,
        "train": {"epochs": EPOCHS, "batch_size": 64, "patience": None, "lr": 3e-3},
        "cluster": {"storage_path": str(root / "ray"), "max_failures": 0},
        "mlflow": {"experiment": "sweep-test"},
        "tune": {
            "space": str(space),
            "num_samples": 4,
            "search": "optuna",
            "name": "tae",
            "scheduler": "fifo",
        },
    }
    marker = root / "failed-once"
    os.environ[FAULT_ENV] = f"1:{marker}"
    try:
        first = tune_main(config, tracking_uri=uri, echo=False)
        second = tune_main(config, tracking_uri=uri, resume=True, name="tae", echo=False)
    finally:
        os.environ.pop(FAULT_ENV, None)
    return first, second, uri


@pytest.mark.slow
def test_tae_sweep_resumes_without_rerunning_finished_trials_and_selects_after_the_warm_up(tae_sweep):
    from mlflow.tracking import MlflowClient

    first, second, uri = tae_sweep
    t1, t2 = first.table, second.table
    finished = set(t1.loc[t1["completed"], "trial_id"])
    failed = set(t1.loc[t1["error"].notna(), "trial_id"])
    assert finished and failed, t1
    assert len(t2) == 4 and t2["completed"].all(), t2
    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_run(second.parent_run_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{second.parent_run_id}'",
    )
    assert first.parent_run_id == second.parent_run_id
    per_trial = pd.Series([r.data.tags["mvimpute.trial_id"] for r in runs]).value_counts()
    for trial in finished:
        assert per_trial[trial] == 1  # not run again
        before = t1.set_index("trial_id").loc[trial]
        after = t2.set_index("trial_id").loc[trial]
        assert before["score"] == after["score"] and before["checkpoint"] == after["checkpoint"]
    for trial in failed:
        assert per_trial[trial] == 2  # the failed attempt and the rerun
    # TAE: the selected epoch lies after each trial's warm-up
    for _, row in t2.iterrows():
        assert row["best_epoch"] >= math.ceil(row["model_params.warmup_end"] * EPOCHS - 1e-9), row
    best = t2.loc[t2["score"].idxmin()]
    version = client.get_model_version_by_alias("mvimpute-tae", "champion")
    assert version.run_id == best["mlflow_run_id"] and second.best_trial == best["trial_id"]
