"""`Predictor`: input checks naming instance/view/position, ids and order, observed values untouched,
std / intervals / quantiles against numpy on the very draws returned, the frame layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import mvimpute as mvi
from mvimpute.predictor import InputError, Predictor, central_interval, default_model_uri


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    data = mvi.load_dataset("digits-halves")
    imp = mvi.MultiViewImputer("jpvae", epochs=3, hidden=[32], latent_dim=4, batch_size=256, device="cpu")
    path = imp.fit(data).save(tmp_path_factory.mktemp("pred") / "model.pt")
    return Predictor.from_checkpoint(path, device="cpu")


@pytest.fixture(scope="module")
def corrupted():
    data = mvi.load_dataset("digits-halves").subset(np.arange(30))
    return mvi.masking.corrupt(data, view_rate=0.4, mcar_rate=0.2, seed=3).data


def test_default_model_uri_follows_the_environment(monkeypatch):
    monkeypatch.delenv("MVIMPUTE_MODEL_URI", raising=False)
    assert default_model_uri() == "models:/mvimpute-jpvae@champion"
    monkeypatch.setenv("MVIMPUTE_MODEL_URI", "models:/other@staging")
    assert default_model_uri() == "models:/other@staging"
    assert default_model_uri("runs:/abc/model") == "runs:/abc/model"


def test_every_output_keeps_observed_entries_and_draws_give_std_and_intervals(predictor, corrupted):
    torch.manual_seed(0)
    pred = predictor.predict(
        corrupted, outputs=("std", "interval", "quantiles", "samples"), n_samples=40, level=0.8, quantiles=[0.25, 0.75]
    )
    assert pred.index.tolist() == corrupted.index.tolist()
    for v, x in corrupted.views.items():
        obs = ~np.isnan(x)
        assert pred.samples[v].shape == (40, *x.shape)
        np.testing.assert_array_equal(pred.mean[v][obs], x[obs])
        for part in (pred.lower[v], pred.upper[v], pred.quantiles[0.25][v], *pred.samples[v]):
            np.testing.assert_array_equal(part[obs], x[obs])
        assert np.isfinite(pred.mean[v]).all()
        # numpy on the returned draws: the std, the 10 % / 90 % quantiles of an 80 % central interval
        draws = pred.samples[v]
        np.testing.assert_allclose(pred.std[v][~obs], draws.std(0, ddof=1)[~obs], rtol=1e-12)
        assert (pred.std[v][obs] == 0).all() and (pred.std[v][~obs] > 0).all()
        if not hasattr(predictor.imputer, "predict_interval"):  # calibrated intervals are not raw quantiles
            np.testing.assert_allclose(pred.lower[v][~obs], np.quantile(draws, 0.1, axis=0)[~obs])
            np.testing.assert_allclose(pred.upper[v][~obs], np.quantile(draws, 0.9, axis=0)[~obs])
        assert (pred.lower[v] <= pred.upper[v]).all()
        assert (pred.quantiles[0.25][v] <= pred.quantiles[0.75][v]).all()


def test_central_interval_is_the_two_tail_quantiles(predictor, corrupted):
    draws = {"v": np.random.default_rng(0).normal(size=(2001, 3, 2))}
    if hasattr(predictor.imputer, "predict_interval"):
        pytest.skip("the imputer brings its own calibrated intervals")
    lo, hi = central_interval(predictor.imputer, corrupted, 0.9, 2001, draws)
    np.testing.assert_allclose(lo["v"], np.quantile(draws["v"], 0.05, axis=0))
    np.testing.assert_allclose(hi["v"], np.quantile(draws["v"], 0.95, axis=0))
    assert np.all(np.abs(lo["v"] + 1.645) < 0.15) and np.all(np.abs(hi["v"] - 1.645) < 0.15)  # N(0, 1) tails


def test_instances_round_trip_with_ids_and_missing_views(predictor):
    data = mvi.load_dataset("digits-halves").subset(np.arange(3))
    top, bottom = data.views["top"], data.views["bottom"]
    partial = bottom[2].tolist()
    partial[5] = None
    instances = [{"top": top[0].tolist(), "bottom": None}, {"bottom": bottom[1].tolist()}, {"bottom": partial}]
    out = predictor.predict_instances(instances, ids=["a", "b", "c"], outputs=["std"], n_samples=10)
    assert [o["id"] for o in out] == ["a", "b", "c"]
    assert out[0]["mean"]["top"] == top[0].tolist() and out[1]["mean"]["bottom"] == bottom[1].tolist()
    assert all(len(o["mean"][v]) == 32 and len(o["std"][v]) == 32 for o in out for v in ("top", "bottom"))
    assert out[2]["mean"]["bottom"][:5] == partial[:5] and out[2]["std"]["bottom"][5] > 0
    # the same numbers as the frame path
    frame = predictor.check_instances(instances).to_frame()
    ref = predictor.predict(frame).mean
    np.testing.assert_allclose(np.array([o["mean"]["bottom"] for o in out]), ref["bottom"], rtol=1e-12)


@pytest.mark.parametrize(
    "instances, loc, words",
    [
        ([{"topp": [0.0] * 32}], (0, "topp"), "unknown view"),
        ([{"top": [0.0] * 32}, {"top": [0.0] * 31}], (1, "top"), "31 values"),
        ([{"top": [0.0] * 31 + ["x"]}], (0, "top", 31), "not a number"),
        ([{"top": [0.0, float("inf")] + [0.0] * 30}], (0, "top", 1), "not finite"),
        ([{"top": [True] + [0.0] * 31}], (0, "top", 0), "not a number"),
        ([{"top": None, "bottom": None}], (0,), "every view is missing"),
        ([{"top": [None] * 32}], (0,), "every view is missing"),
        ([{"top": "0,1,2"}], (0, "top"), "list of 32 numbers"),
        ([[0.0] * 32], (0,), "an instance is an object"),
        ([], (), "no instances"),
    ],
)
def test_bad_instances_name_instance_view_and_position(predictor, instances, loc, words):
    with pytest.raises(InputError, match=words) as err:
        predictor.check_instances(instances)
    assert err.value.loc == loc


def test_frame_keeps_order_ids_and_column_order_and_adds_the_asked_columns(predictor, corrupted):
    frame = corrupted.to_frame().reset_index(drop=True)
    frame = frame[frame.columns[::-1]]
    frame.insert(0, "sid", [f"s{i}" for i in range(len(frame))])
    out = predictor.predict_frame(frame, id_column="sid", outputs=["std", "interval", "samples"], n_samples=8)
    assert out["sid"].tolist() == frame["sid"].tolist()
    feats = list(frame.columns[1:])
    assert list(out.columns[: len(feats) + 1]) == ["sid", *feats]
    assert {f"{c}__std" for c in feats} <= set(out.columns) and {f"{c}__lower" for c in feats} <= set(out.columns)
    assert len(out["top:px00__draws"].iloc[0]) == 8
    x, y = frame[feats].to_numpy(), out[feats].to_numpy()
    np.testing.assert_array_equal(y[~np.isnan(x)], x[~np.isnan(x)])
    assert not np.isnan(y).any()
    with pytest.raises(ValueError, match="stray"):
        predictor.predict_frame(frame.assign(stray=1.0), id_column="sid")
    with pytest.raises(ValueError, match="n_samples"):
        predictor.predict(frame.drop(columns="sid"), outputs=["std"], n_samples=1)
    with pytest.raises(ValueError, match="unknown output"):
        predictor.predict(frame.drop(columns="sid"), outputs=["median"])


def test_metadata_describes_the_model(predictor):
    meta = predictor.metadata()
    assert meta["model"] == "jpvae"
    assert meta["views"] == {
        v: {"width": 32, "likelihood": "bounded", "columns": predictor.schema.columns[v]} for v in ("top", "bottom")
    }
    assert "calibration" in meta and pd.isna(meta.get("version", np.nan))


def test_metadata_reports_the_models_calibration(predictor):
    import json

    from mvimpute.models.calibration import KINDS, LEVELS

    cal = predictor.imputer.model_.calibration
    meta = predictor.metadata()["calibration"]
    json.dumps(meta, allow_nan=False)  # what /metadata sends: no ±Inf
    assert meta["fitted"] is True and bool(cal.fitted)
    assert meta["n_samples"] == predictor.imputer.train_config.calibration_samples
    assert meta["levels"] == list(LEVELS) and meta["sample_level"] == 0.9
    assert all(meta["views"][v]["calibrated"] for v in ("top", "bottom"))
    for i, v in enumerate(cal.views):
        for k, kind in enumerate(KINDS):
            got = meta["views"][v]["kinds"][kind]
            assert got["n_entries"] == int(cal.n_entries[i, k]) > 0
            assert got["delta"] == pytest.approx(float(cal.delta[i, k]))
            stretch = [np.inf if t is None else t for t in got["stretch"]]
            np.testing.assert_allclose(stretch, cal.stretch[i, k].numpy(), rtol=1e-6)
    assert cal.stretch.ne(1).any()  # a fitted stretch, not the unfitted ones


def test_metadata_says_when_a_model_is_not_calibrated():
    data = mvi.load_dataset("digits-halves").subset(np.arange(200))
    imp = mvi.MultiViewImputer("jpvae", epochs=1, hidden=[16], latent_dim=3, calibrate=False, device="cpu")
    meta = Predictor(imp.fit(data)).metadata()["calibration"]
    assert meta["fitted"] is False
    assert meta["views"] == {v: {"likelihood": "bounded", "calibrated": False} for v in ("top", "bottom")}


def test_requests_are_checked_alone_predicted_together_and_split_back(predictor):
    data = mvi.load_dataset("digits-halves").subset(np.arange(4))
    top, bottom = data.views["top"], data.views["bottom"]
    a = predictor.request([{"top": top[0].tolist()}, {"bottom": bottom[1].tolist()}], ids=["a", "b"])
    b = predictor.request([{"top": top[2].tolist()}], outputs=["std", "interval"], n_samples=20, level=0.8)
    c = predictor.request([{"bottom": bottom[3].tolist(), "top": None}], ids=[7], n_samples=50)
    assert a.asks == c.asks == (("mean",), 0, 0.9) and b.asks == (("mean", "std", "interval"), 20, 0.8)
    got = predictor.predict_requests([a, b, c])
    assert [len(items) for items in got] == [2, 1, 1]
    assert [p["id"] for p in got[0]] == ["a", "b"] and got[2][0]["id"] == 7 and "id" not in got[1][0]
    assert set(got[0][0]) == {"id", "mean"} and set(got[1][0]) == {"mean", "std", "lower", "upper"}
    alone = predictor.predict_instances([{"top": top[0]}, {"bottom": bottom[1]}, {"bottom": bottom[3]}])
    for item, ref in zip([*got[0], got[2][0]], alone, strict=True):
        for v in ("top", "bottom"):
            np.testing.assert_allclose(item["mean"][v], ref["mean"][v], rtol=1e-6, atol=1e-7)
    assert got[1][0]["mean"]["top"] == top[2].tolist() and got[1][0]["std"]["top"] == [0.0] * 32
    with pytest.raises(InputError) as err:
        predictor.request([{"top": top[0].tolist()}, {"topp": top[0].tolist()}])
    assert err.value.loc == (1, "topp")


def test_a_predictor_from_a_checkpoint_follows_no_alias(predictor):
    assert not predictor.follows_alias and predictor.reload_if_moved() is None
