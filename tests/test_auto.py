"""`model="auto"`: candidates ranked on the validation score, the winner kept, the table reported.

Planted data sets: linear-Gaussian views (a linear model should win), a nonlinear manifold (a
linear model must lose) and a noisy nonlinear manifold read through many columns (a deep model
wins). Each test checks the selection against the candidates' own scores on held-out rows, not
against a name.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import mvimpute as mvi
from mvimpute import masking
from mvimpute.auto import COST_ORDER, pick_winner
from mvimpute.data.multiview import MultiViewData
from mvimpute.scoring import score

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_JPVAE = {"hidden": [32, 32], "latent_dim": 4, "kl_cycles": 0}
FAST = {"epochs": 25, "patience": 10, "val_samples": 10, "calibration_samples": 20, "progress": False, "device": "cpu"}


def linear_views(n: int = 400, seed: int = 0) -> MultiViewData:
    """Two views, each a linear map of a shared 3-d Gaussian factor plus noise: E[b | a] is linear."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    a = z @ rng.normal(size=(3, 8)) + 0.3 * rng.normal(size=(n, 8))
    b = z @ rng.normal(size=(3, 6)) + 0.3 * rng.normal(size=(n, 6))
    return MultiViewData({"a": a, "b": b})


def manifold_views(n: int = 500, seed: int = 0) -> MultiViewData:
    """View `a` a linear image of a 4-d Gaussian latent z, view `b` squares of projections of z:
    E[b | a] is quadratic in a and has no linear part (a linear model predicts b's mean)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    a = z @ rng.normal(size=(4, 10)) / 2 + 0.1 * rng.normal(size=(n, 10))
    w = rng.normal(size=(4, 8))
    b = (z @ (w / np.linalg.norm(w, axis=0))) ** 2 - 1 + 0.1 * rng.normal(size=(n, 8))
    return MultiViewData({"a": a, "b": b})


def noisy_manifold_views(n: int = 600, p: int = 300, noise: float = 1.5, seed: int = 0) -> MultiViewData:
    """Two wide views, each a random one-layer tanh network of a shared 3-d latent (16 units) read
    through 300 columns of noise as large as the signal: a nonlinear low-dimensional manifold that
    no single column reveals. An encoder pools the columns into the latent; KNN's distances are
    mostly noise, MICE's regressions on 20 predictors are linear and see a few columns each."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    views = {}
    for name in ("a", "b"):
        hidden = np.tanh(z @ (1.5 * rng.normal(size=(3, 16))) + rng.normal(size=16))
        h = hidden @ (rng.normal(size=(16, p)) / 4.0)
        views[name] = h / h.std(0) + noise * rng.normal(size=h.shape)
    return MultiViewData(views)


def held_out_crps(imp, test: MultiViewData, seed: int = 3) -> float:
    """CRPS on held-out rows with entries and whole views hidden (as the validation split hides them)."""
    hidden = masking.corrupt(test, mcar_rate=0.2, view_rate=0.3, seed=seed)
    return score(imp, test, hidden.data, n_samples=50, eval_elbo_steps=0)["crps"]


def check_selection(data: MultiViewData, candidates: dict, tol: float = 0.1, **train):
    """Fit auto and each candidate alone on the training rows; auto's pick must be the candidate
    that scores best on the held-out rows, up to `tol` (relative)."""
    train_params = {**FAST, **train}
    train, test = data.split(0.25, 0)
    imp = mvi.MultiViewImputer("auto", candidates=candidates, **train_params).fit(train)
    held = {}
    for name, params in candidates.items():
        alone = mvi.MultiViewImputer(name, **params, **train_params).fit(train)
        held[name] = held_out_crps(alone, test)
    best = min(held.values())
    assert held[imp.model_name] <= best * (1 + tol), (imp.model_name, held, imp.selection_["candidates"])
    return imp, held


def test_linear_gaussian_views_pick_the_best_held_out_model_and_it_beats_the_mean():
    candidates = {"mean": {}, "knn": {}, "mice": {"n_iter": 5, "sweeps": 5}, "jpvae": TINY_JPVAE}
    imp, held = check_selection(linear_views(), candidates)
    assert held[imp.model_name] < 0.8 * held["mean"], held
    assert held[imp.model_name] < held["knn"], held  # a linear conditional beats local averaging here
    rows = {r["model"]: r for r in imp.selection_["candidates"]}
    assert rows[imp.model_name]["winner"] and sum(r["winner"] for r in rows.values()) == 1


def test_a_nonlinear_manifold_picks_the_best_held_out_model_not_the_linear_one():
    candidates = {"mean": {}, "knn": {}, "mice": {"n_iter": 5, "sweeps": 5}, "jpvae": TINY_JPVAE}
    imp, held = check_selection(manifold_views(), candidates)
    assert held[imp.model_name] < 0.9 * held["mice"], held  # the planted structure is beyond a linear model
    assert imp.model_name == min(held, key=held.get), (imp.model_name, held)


def test_a_noisy_nonlinear_manifold_picks_the_deep_model_that_wins_on_held_out_rows():
    from mvimpute.models import MODEL_REGISTRY

    candidates = {"mean": {}, "knn": {}, "mice": {"n_nearest_features": 20, "n_iter": 5, "sweeps": 5}, "jpvae": {}}
    imp, held = check_selection(noisy_manifold_views(), candidates, tol=0.0, epochs=40)
    best = min(held, key=held.get)
    assert not MODEL_REGISTRY[best].one_pass, held  # the planted structure favours a deep model ...
    assert held[best] < 0.97 * min(v for k, v in held.items() if MODEL_REGISTRY[k].one_pass), held  # ... clearly
    assert imp.model_name == best, (imp.model_name, held, imp.selection_["candidates"])  # and auto picks it


def test_ties_go_to_the_cheaper_model():
    rows = [{"model": "jpvae", "val_score": 1.000}, {"model": "mice", "val_score": 1.005},
            {"model": "knn", "val_score": 1.2}, {"model": "mean", "val_score": float("nan")}]  # fmt: skip
    assert pick_winner(rows, 0.01) == "mice"  # within 1 % of the best: the cheaper
    assert pick_winner(rows, 0.001) == "jpvae"
    assert pick_winner(rows, 0.25) == "knn"
    assert COST_ORDER.index("mean") < COST_ORDER.index("knn") < COST_ORDER.index("mice") < COST_ORDER.index("jpvae")
    # end to end: on views with no relation between their columns, the column mean and KNN score
    # alike; within the tolerance the cheaper (the mean) wins whichever scored lower
    rng = np.random.default_rng(1)
    noise = MultiViewData({"a": rng.normal(size=(200, 6)), "b": rng.normal(size=(200, 4))})
    imp = mvi.MultiViewImputer("auto", candidates=["knn", "mean"], tie_tolerance=0.2, **FAST).fit(noise)
    scores = {r["model"]: r["val_score"] for r in imp.selection_["candidates"]}
    assert abs(scores["knn"] - scores["mean"]) <= 0.2 * min(scores.values()), scores
    assert imp.model_name == "mean"
    strict = mvi.MultiViewImputer("auto", candidates=["knn", "mean"], tie_tolerance=0.0, tie_se=0, **FAST).fit(noise)
    assert strict.model_name == min(scores, key=scores.get)


# ----------------------------------------------------------------------------- the one-standard-error rule


def _replicate_rows(rng, n_rows: int, metric: str):
    """Per-row sums of two candidates on one validation split: rows hold 1-5 hidden entries, each
    entry's score is a row effect shared by both (correlated) plus each candidate's own noise; B's
    entries are worse by 0.05 on average."""
    count = rng.integers(1, 6, size=n_rows)
    shared = rng.gamma(2.0, 0.2, size=n_rows)
    rows = {}
    for name, shift in (("a", 0.0), ("b", 0.05)):
        per_entry = [shared[i] + shift + 0.3 * rng.random(count[i]) for i in range(n_rows)]
        key = "crps" if metric == "val_crps" else "sse"
        rows[name] = {key: [float(np.sum(e)) for e in per_entry], "count": count.tolist()}
    return rows


@pytest.mark.parametrize("metric", ["val_crps", "val_rmse"])
def test_the_paired_standard_error_matches_the_spread_over_replicate_splits(metric):
    """Monte Carlo: over 2,000 independent validation splits the standard deviation of the score
    difference must match the mean of the standard errors estimated from one split each."""
    from mvimpute.auto import paired_standard_error

    rng = np.random.default_rng(0)
    key = "crps" if metric == "val_crps" else "sse"
    diffs, ses, unpaired = [], [], []
    for _ in range(2000):
        r = _replicate_rows(rng, 40, metric)
        n = np.sum(r["a"]["count"])
        a, b = np.sum(r["a"][key]) / n, np.sum(r["b"][key]) / n
        diffs.append(a - b if metric == "val_crps" else math.sqrt(a) - math.sqrt(b))
        ses.append(paired_standard_error(r["a"], r["b"], metric))
        unpaired.append(math.sqrt(40 * (np.var(r["a"][key], ddof=1) + np.var(r["b"][key], ddof=1))) / n)
    assert np.mean(ses) == pytest.approx(np.std(diffs), rel=0.08), (np.mean(ses), np.std(diffs))
    if metric == "val_crps":  # unpaired, the shared row effect would count twice: the pairing matters
        assert np.mean(unpaired) > 3 * np.std(diffs), (np.mean(unpaired), np.std(diffs))


def test_one_entry_per_row_reduces_to_the_textbook_standard_error_of_a_mean():
    from mvimpute.auto import paired_standard_error

    rng = np.random.default_rng(1)
    a, b = rng.random(30), rng.random(30)
    one = [1] * 30
    se = paired_standard_error({"crps": a.tolist(), "count": one}, {"crps": b.tolist(), "count": one}, "val_crps")
    assert se == pytest.approx(np.std(a - b, ddof=1) / math.sqrt(30))
    # rows without hidden entries do not count; different hidden entries give no paired error
    a_empty = {"crps": [*a, 0.0], "count": [*one, 0]}
    b_empty = {"crps": [*b, 0.0], "count": [*one, 0]}
    assert paired_standard_error(a_empty, b_empty, "val_crps") == pytest.approx(se)
    two = [2] * 30
    other = {"crps": b.tolist(), "count": two}
    assert paired_standard_error({"crps": a.tolist(), "count": one}, other, "val_crps") is None


def test_the_weighted_standard_error_follows_the_kind_that_counts():
    """With the whole-view kind weighted 1, differences on single entries do not count, and the
    other way round: the weights are those of `training.mix_of_kinds`."""
    from mvimpute.auto import paired_standard_error

    rng = np.random.default_rng(3)
    n = 40
    views_a, views_b = rng.random(n), rng.random(n)
    same_entries = rng.random(n)
    a = {"crps": (views_a + same_entries).tolist(), "crps_views": views_a.tolist(), "count": [3] * n,
         "count_views": [2] * n}  # fmt: skip
    b = {"crps": (views_b + same_entries).tolist(), "crps_views": views_b.tolist(), "count": [3] * n,
         "count_views": [2] * n}  # fmt: skip
    assert paired_standard_error(a, b, "val_crps", view_weight=0.0) == pytest.approx(0.0, abs=1e-12)
    expected = math.sqrt(n * np.var((views_a - views_b) / (2 * n), ddof=1))
    assert paired_standard_error(a, b, "val_crps", view_weight=1.0) == pytest.approx(expected)


def test_a_lead_inside_one_standard_error_goes_to_the_cheaper_model():
    rng = np.random.default_rng(2)
    noise = rng.normal(size=50)
    e = rng.normal(size=50)
    e = 0.1 * (e - e.mean()) / e.std(ddof=1)  # paired differences with sd 0.1: SE 0.1 / √50 = 0.0141
    mean_rows = {"crps": (1.0 + noise).tolist(), "count": [1] * 50}
    close = {"crps": (1.0 - 0.01 + noise + e).tolist(), "count": [1] * 50}  # ahead by 0.01 < 1 SE
    far = {"crps": (1.0 - 0.02 + noise + e).tolist(), "count": [1] * 50}  # ahead by 0.02 > 1 SE
    for jp_rows, expected in ((close, "mean"), (far, "jpvae")):
        rows = [{"model": "mean", "val_score": float(np.mean(mean_rows["crps"])), "val_rows": mean_rows},
                {"model": "jpvae", "val_score": float(np.mean(jp_rows["crps"])), "val_rows": jp_rows}]  # fmt: skip
        assert pick_winner(rows, 0.0, tie_se=1.0) == expected, rows
        assert pick_winner(rows, 0.0, tie_se=0.0) == "jpvae"  # off: the lowest score
        assert rows[0]["se_vs_best"] > 0 and rows[1]["se_vs_best"] == 0
    # without row scores the rule falls back to the relative tolerance
    bare = [{"model": "mean", "val_score": 1.0}, {"model": "jpvae", "val_score": 0.98}]
    assert pick_winner(bare, 0.0, tie_se=1.0) == "jpvae" and bare[0]["se_vs_best"] is None


def test_the_validation_row_sums_add_up_to_the_scores_and_auto_keeps_them_out_of_the_table():
    from mvimpute.training import final_validation_score

    imp = mvi.MultiViewImputer("knn", **FAST).fit(linear_views(200))
    scores = final_validation_score(imp.model_, imp.validation_set_, imp.train_config)
    rows = scores["rows"]
    hidden = sum(int(h.sum()) for h in imp.validation_set_.hidden.values())
    assert sum(rows["count"]) == hidden and len(rows["count"]) == len(imp.validation_set_.corrupted)
    assert sum(rows["crps"]) / hidden == pytest.approx(scores["val_crps"])
    assert math.sqrt(sum(rows["sse"]) / hidden) == pytest.approx(scores["val_rmse"])
    from mvimpute.training import validation_score

    per_epoch = validation_score(imp.model_, imp.validation_set_, 10)  # what every epoch computes
    assert "rows" not in per_epoch and "kinds" not in per_epoch
    auto = mvi.MultiViewImputer("auto", candidates=["mean", "knn"], tie_se=1.0, **FAST).fit(linear_views(200))
    assert auto.selection_["tie_se"] == 1.0
    assert all("val_rows" not in r and "se_vs_best" in r for r in auto.selection_["candidates"])


def test_the_table_is_in_the_checkpoint_and_survives_save_and_load(tmp_path):
    data = linear_views(150)
    imp = mvi.MultiViewImputer("auto", candidates=["mean", "knn"], **FAST).fit(data)
    sel = imp.selection_
    assert sel["metric"] == "val_crps" and sel["winner"] == imp.model_name
    assert [r["model"] for r in sel["candidates"]] == ["mean", "knn"]
    for r in sel["candidates"]:
        assert r["status"] == "ok" and math.isfinite(r["val_score"]) and r["fit_seconds"] >= 0
    loaded = mvi.MultiViewImputer.load(imp.save(tmp_path / "auto.pt"))
    assert loaded.model_name == imp.model_name and loaded.selection_ == sel
    np.testing.assert_allclose(loaded.transform(data.views)["b"], imp.transform(data.views)["b"])
    from mvimpute.predictor import Predictor

    meta = Predictor.load(tmp_path / "auto.pt").metadata()  # what the endpoint's /metadata returns
    assert meta["selection"]["winner"] == imp.model_name
    assert {r["model"] for r in meta["selection"]["candidates"]} == {"mean", "knn"}


def test_a_candidate_past_the_budget_is_reported_as_skipped():
    data = linear_views(150)
    imp = mvi.MultiViewImputer("auto", candidates=["mean", "knn", "mice"], budget=1e-6, **FAST).fit(data)
    rows = {r["model"]: r for r in imp.selection_["candidates"]}
    assert rows["mean"]["status"] == "ok" and imp.model_name == "mean"  # the cheapest always runs
    for name in ("knn", "mice"):
        assert rows[name]["status"] == "skipped" and "budget" in rows[name]["note"]


def test_a_deep_candidate_stops_its_epochs_at_the_time_left():
    data = linear_views(150)
    imp = mvi.MultiViewImputer("jpvae", **TINY_JPVAE, **{**FAST, "epochs": 10_000, "patience": None})
    imp.fit(data, time_limit=0.5)
    assert imp.stopped_at_time_limit_ and 1 <= len(imp.history_) < 10_000
    assert imp.best_epoch_ >= 1  # the best epoch so far is kept


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"candidates": ["mean", "forest"]}, "candidates"),
        ({"candidates": []}, "candidates"),
        ({"candidates": ["auto"]}, "candidates"),
        ({"candidates": {"knn": {"kk": 3}}}, "candidates"),
        ({"budget": 0}, "budget"),
        ({"budget": -5}, "budget"),
        ({"tie_tolerance": 2}, "tie_tolerance"),
        ({"tie_se": -1}, "tie_se"),
        ({"tie_se": "one"}, "tie_se"),
        ({"alpha": 0.9}, "alpha"),
        ({"cv_folds": 1}, "cv_folds"),
        ({"cv_folds": -2}, "cv_folds"),
        ({"cv_folds": 2.5}, "cv_folds"),
        ({"cv_folds": True}, "cv_folds"),
    ],
)
def test_bad_auto_settings_are_value_errors_naming_the_field(params, field):
    with pytest.raises(ValueError, match=field):
        mvi.MultiViewImputer("auto", **params)
    from mvimpute.config import load_job_config

    with pytest.raises(ValueError, match=field):
        load_job_config({"model": "auto", "model_params": params})


def test_folds_cover_every_row_once_and_follow_the_seed():
    from mvimpute.auto import fold_rows

    folds = fold_rows(23, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(23))  # a partition
    assert {len(f) for f in folds} == {4, 5}  # sizes differ by at most one
    assert all(np.all(np.diff(f) > 0) for f in folds)
    assert all(np.array_equal(a, b) for a, b in zip(folds, fold_rows(23, 5, seed=3), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, fold_rows(23, 5, seed=4), strict=True))
    with pytest.raises(ValueError, match="cv_folds=5 needs at least 10 samples"):
        fold_rows(9, 5, seed=0)


def test_cv_folds_rank_on_every_row_and_refit_the_winner_on_its_own_split():
    """With `cv_folds`, each candidate's score is that of its K fold fits' hidden entries taken
    together: checked against the fits made here by hand and summed from their per-row sums (not
    from the per-kind sums the pooling adds up); the winner is the lowest pooled score, fitted again
    on its own validation split and calibrated there."""
    from mvimpute.auto import fold_rows
    from mvimpute.training import final_validation_score

    data = masking.corrupt(linear_views(60, seed=2), mcar_rate=0.1, seed=1).data  # single entries missing
    cands = {"mean": {}, "knn": {"k": 5}}
    imp = mvi.MultiViewImputer("auto", candidates=cands, cv_folds=3, **FAST).fit(data)
    sel = imp.selection_
    assert sel["cv_folds"] == 3
    rows = {r["model"]: r for r in sel["candidates"]}
    for name, params in cands.items():
        crps, count, fold_scores = 0.0, 0, []
        for val in fold_rows(data.n_samples, 3, FAST.get("seed", 0)):
            train = np.setdiff1d(np.arange(data.n_samples), val)
            one = mvi.MultiViewImputer(name, **params, **FAST, calibrate=False)
            one.fit(data.subset(train), validation=data.subset(val))
            s = final_validation_score(one.model_, one.validation_set_, one.train_config)
            crps, count = crps + sum(s["rows"]["crps"]), count + sum(s["rows"]["count"])
            fold_scores.append(s["val_score"])
        assert count > 0
        # the data miss single entries only: the score is the CRPS of the hidden single entries
        assert rows[name]["view_weight"] == 0.0
        entries = rows[name]["val_crps"]
        assert entries == pytest.approx(crps / count, rel=1e-9)
        assert rows[name]["fold_scores"] == pytest.approx(fold_scores, rel=1e-9)
    best = min(rows.values(), key=lambda r: r["val_score"])
    assert imp.model_name == best["model"] or rows[imp.model_name]["val_score"] <= best["val_score"] * 1.01
    alone = mvi.MultiViewImputer(imp.model_name, **cands[imp.model_name], **FAST).fit(data)
    assert np.array_equal(imp.validation_index_, alone.validation_index_)  # its own split, not a fold
    assert bool(imp.model_.calibration.fitted)
    np.testing.assert_allclose(imp.transform(data.views)["b"], alone.transform(data.views)["b"])


def test_cv_folds_refuse_validation_data_and_the_ray_runners():
    data = linear_views(60)
    with pytest.raises(ValueError, match="cv_folds"):
        mvi.MultiViewImputer("auto", candidates=["mean"], cv_folds=3, **FAST).fit(data, validation=linear_views(20))
    from mvimpute.config import load_job_config
    from mvimpute.jobs.auto import settings_of

    with pytest.raises(ValueError, match="cv_folds ranks on folds in-process"):
        settings_of(load_job_config({"model": "auto", "model_params": {"cv_folds": 3}}))


def test_cli_fit_model_auto_prints_the_table(tmp_path):
    from typer.testing import CliRunner

    from mvimpute.cli import app

    out = tmp_path / "auto.pt"
    res = CliRunner().invoke(app, ["fit", "--data", "synthetic-omics", "--model", "auto", "--epochs", "2",
                                   "--out", str(out), "-p", "candidates=[mean,knn]", "--device", "cpu",
                                   "-p", "calibration_samples=20", "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "candidates ranked on val_crps" in res.output
    assert re.search(r"^mean( \*)?\s+\d", res.output, flags=re.M), res.output
    assert re.search(r"^knn( \*)?\s+\d", res.output, flags=re.M), res.output
    assert re.search(r"fitted auto → (mean|knn) on \d+ samples", res.output), res.output
    assert mvi.MultiViewImputer.load(out).selection_["winner"] in ("mean", "knn")
    bad = CliRunner().invoke(app, ["fit", "--model", "auto", "-p", "budget=0", "--out", str(out)])
    assert bad.exit_code != 0 and "budget" in bad.output
    folds = CliRunner().invoke(app, ["fit", "--data", "synthetic-omics", "--model", "auto", "--out", str(out),
                                     "-p", "candidates=[mean,knn]", "-p", "cv_folds=3", "--no-progress"])  # fmt: skip
    assert folds.exit_code == 0, folds.output
    assert "candidates ranked on val_crps of 3 folds of the rows" in folds.output
    assert mvi.MultiViewImputer.load(out).selection_["cv_folds"] == 3


# ----------------------------------------------------------------------------- the jobs: train and tune


def _job(root, name: str, candidates) -> tuple[dict, str]:
    config = {
        "data": "digits-halves",
        "model": "auto",
        "model_params": {"candidates": candidates},
        "train": {"epochs": 2, "patience": None, "val_frac": 0.15, "val_samples": 10, "calibration_samples": 20},
        "cluster": {"storage_path": str(root / "ray")},
        "mlflow": {"experiment": "auto-test"},
        "tune": {"num_samples": 1, "scheduler": "fifo", "name": name},
    }
    return config, f"sqlite:///{root / 'mlflow.db'}"


def test_an_auto_sweep_runs_as_many_trials_at_once_as_its_candidates_and_the_cluster_allow(tmp_path):
    """`num_samples` is per candidate with a space: an auto sweep at `num_samples=1` still has a trial
    per candidate, and two workers' CPUs run two of them at once (not one, as `num_samples` said)."""
    from mvimpute.config import TuneJobConfig, load_job_config
    from mvimpute.engine.resources import plan_sweep_resources
    from mvimpute.jobs.auto import candidate_space
    from mvimpute.jobs.tune import trial_count

    config, _ = _job(tmp_path, "count", {"mean": {}, "knn": {}, "jpvae": {}})
    for samples, trials in ((1, 3), (3, 5)):
        config["tune"]["num_samples"] = samples
        job = load_job_config(config, kind=TuneJobConfig)
        n = trial_count(job, candidate_space(job, samples))
        assert n == trials  # mean and knn have no space: one trial each; jpvae's space `samples`
        assert plan_sweep_resources(1, None, n, {"CPU": 3.0})[2] == 2  # head's CPU for Ray Data, two trials
        assert plan_sweep_resources(1, None, n, {"CPU": 2.0})[2] == 1
    config["model"], config["tune"]["num_samples"] = "jpvae", 4
    del config["model_params"]
    job = load_job_config(config, kind=TuneJobConfig)
    assert trial_count(job, None) == 4


@pytest.mark.slow
def test_tune_model_auto_runs_each_candidate_as_a_trial_and_registers_the_winner(ray_session, tmp_path):
    from mlflow.tracking import MlflowClient

    from mvimpute.jobs.tune import tune_main
    from mvimpute.registry import fetch_checkpoint

    tiny = {"hidden": [32], "latent_dim": 4, "kl_cycles": 0, "prior": "orthogonal", "conditional": "prior"}
    config, uri = _job(tmp_path, "auto-sweep", {"mean": {}, "knn": {}, "jpvae": tiny})
    out = tune_main(config, tracking_uri=uri, echo=False)
    t = out.table
    assert sorted(t["candidate.model"]) == ["jpvae", "knn", "mean"] and t["completed"].all(), t.to_string()
    assert t["final_score"].notna().all(), t.to_string()
    per_model = [{"model": m, "val_score": s} for m, s in zip(t["candidate.model"], t["final_score"], strict=True)]
    winner = pick_winner(per_model, 0.01)
    champion = t[t["champion"]].iloc[0]
    assert champion["candidate.model"] == winner and out.best_trial == champion["trial_id"]
    client = MlflowClient(uri, registry_uri=uri)
    parent = client.get_run(out.parent_run_id)
    assert parent.data.params["auto.winner"] == winner
    assert {f"auto.{m}.val_score" for m in ("mean", "knn", "jpvae")} <= set(parent.data.metrics)
    path, _ = fetch_checkpoint("models:/mvimpute-auto@champion", uri, tmp_path / "dl")
    loaded = mvi.MultiViewImputer.load(path)
    assert loaded.model_name == winner and loaded.selection_["winner"] == winner
    assert {r["model"] for r in loaded.selection_["candidates"]} == {"mean", "knn", "jpvae"}


@pytest.mark.slow
def test_train_model_auto_runs_the_candidates_and_logs_the_table(ray_session, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from mvimpute.jobs.train import train_main

    config, uri = _job(tmp_path, "auto-train", ["mean", "knn"])
    del config["tune"]
    res = train_main(config, tracking_uri=uri, run_name="auto-train", echo=True)
    printed = capsys.readouterr().out
    assert "candidates ranked on val_crps" in printed and re.search(r"^knn( \*)?\s+\d", printed, flags=re.M), printed
    loaded = mvi.MultiViewImputer.load(res.checkpoint_path)
    sel = loaded.selection_
    assert [r["model"] for r in sel["candidates"]] == ["mean", "knn"] and loaded.model_name == sel["winner"]
    assert sel["winner"] == pick_winner(sel["candidates"], sel["tie_tolerance"])
    run = MlflowClient(uri).get_run(res.run_id)
    assert run.data.params["auto.winner"] == sel["winner"]
    assert {"auto.mean.val_score", "auto.knn.val_score"} <= set(run.data.metrics)
    assert res.model_uri == "models:/mvimpute-auto@champion"


# ----------------------------------------------------------------------------- the data's own kinds of missing entries


def test_whole_view_share_counts_missing_entries_by_kind():
    from mvimpute.batch import MultiViewBatch
    from mvimpute.training import whole_view_share

    a = np.ones((4, 3))
    b = np.ones((4, 2))
    a[0, :] = np.nan  # a whole view: 3 entries
    a[1, 0] = np.nan  # single entries: 1 + 2
    b[2, 1] = np.nan
    b[3, :] = np.nan  # a whole view: 2 entries
    a[3, 2] = np.nan
    batch = MultiViewBatch.from_arrays({"a": a, "b": b})
    assert whole_view_share(batch) == pytest.approx(5 / 8)
    assert whole_view_share(MultiViewBatch.from_arrays({"a": np.ones((3, 2)), "b": np.ones((3, 1))})) is None


def test_the_ranking_score_weighs_hidden_views_and_entries_as_the_data_misses_them():
    """On views whose rows miss only single entries, the score that ranks is the CRPS of the hidden
    single entries (the split's hidden whole views weigh nothing); on rows that miss only whole
    views, theirs. Each kind's share of the hidden entries is checked against the split's masks."""
    from mvimpute.training import final_validation_score, mix_of_kinds

    rng = np.random.default_rng(0)
    base = linear_views(400).views
    entries_only = {v: np.where(rng.random(x.shape) < 0.2, np.nan, x) for v, x in base.items()}
    views_only = {v: x.copy() for v, x in base.items()}
    views_only["b"][rng.random(400) < 0.3] = np.nan
    for views, weight in ((entries_only, 0.0), (views_only, 1.0)):
        imp = mvi.MultiViewImputer("knn", **FAST).fit(MultiViewData(views))
        val = imp.validation_set_
        scores = final_validation_score(imp.model_, val, imp.train_config)
        assert scores["view_weight"] == pytest.approx(weight)
        kinds = scores["kinds"]
        assert scores["val_score"] == pytest.approx(kinds["entries" if weight == 0 else "views"]["crps"])
        assert kinds["views"]["count"] == sum(scores["rows"]["count_views"])
        whole = sum(int((h & (val.corrupted.masks[v] == 0).all(1, keepdim=True)).sum()) for v, h in val.hidden.items())
        assert sum(scores["rows"]["count_views"]) == whole and 0 < whole < sum(scores["rows"]["count"])
        # the overall CRPS is the kinds' mean weighted by their counts
        n_views = sum(scores["rows"]["count_views"])
        n_all = sum(scores["rows"]["count"])
        mixed = (n_views * kinds["views"]["crps"] + (n_all - n_views) * kinds["entries"]["crps"]) / n_all
        assert scores["val_crps"] == pytest.approx(mixed)
        assert mix_of_kinds(scores, "crps", None) == scores["val_crps"]


def test_the_auto_grid_table_against_a_hand_computed_cell(tmp_path):
    """`jobs/evaluate_auto.py --table` (docs/auto.md's tables): auto's RMSE and CRPS over the best
    candidate's, the targets counted, rows of another auto setting kept apart by their label."""
    import json

    from jobs import evaluate_auto

    cell = {"data": "d", "n": 40, "mechanism": "mcar", "rate": 0.2}
    rows = [
        {**cell, "seed": s, "method": m, "rmse": r, "crps": c, "coverage_90": 0.9, "fit_seconds": f, "cpu_seconds": f}
        for s in (0, 1)
        for m, r, c, f in (("mean", 2.0, 1.0, 1.0), ("knn", 1.0, 0.5, 1.0), ("mice", 1.2, 0.4, 2.0),
                           ("auto", 1.1 + 0.1 * s, 0.42, 3.0), ("auto:tie_se=1", 2.0, 1.0, 1.0))
    ]  # fmt: skip
    for r in rows:
        if r["method"].startswith("auto"):
            r["winner"] = "knn"
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = evaluate_auto.summary(path)
    # auto: RMSE 1.15 over KNN's 1.0, CRPS 0.42 over MICE's 0.4, CPU 3 over 1 + 1 + 2
    assert "| 1.150 (knn 1) | 1.050 (mice 0.4) | 0.900 |" in table and "| 0.75 |" in table
    assert "RMSE ≤ 1.02× best in 0, CRPS ≤ 1.02× best in 0, coverage in 0.87–0.93 in 1" in table
    big = [{**r, "n": 1000, "rmse": 1.0 if r["method"] == "auto" else r["rmse"]} for r in rows]  # auto = the best
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + big))
    both = evaluate_auto.summary(path)  # the two cells' ratios averaged: RMSE (1.15 + 1) / 2
    assert "RMSE / best mean 1.075 (worst 1.150), CRPS / best mean 1.050 (worst 1.050)" in both
    assert "time / the candidates' median 0.75" in both
    assert "| 1.150 (knn 1) |" in evaluate_auto.summary(path, sizes=[40])
    only_big = evaluate_auto.summary(path, sizes=[1000])
    assert "cells 1:" in only_big and "RMSE / best mean 1.000" in only_big
    other = evaluate_auto.summary(path, label=evaluate_auto.auto_label(["tie_se=1"]), sizes=[40])
    assert "| 2.000 (knn 1) |" in other and "not worse than the column mean (RMSE and CRPS) in 1" in other
