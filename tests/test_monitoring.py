"""Live calibration and drift monitoring (mvimpute/monitoring.py) and the endpoint's `GET /monitoring`.

The maths against independent numpy / scoringrules computations; then a small JPVAE served three times
on the shared local Ray (monitoring on, off, and fed a shifted view): requests from the training
distribution keep coverage at the checkpoint's and the state `ok`; a view shifted by 2 sd moves drift
and coverage, turns the state `degraded` and shows on Ray's Prometheus metrics endpoint; responses are
the same with monitoring on and off."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import scoringrules as sr
import torch
from http_calls import call  # beside this file

import mvimpute as mvi
from mvimpute import monitoring
from mvimpute.monitoring import Monitor
from mvimpute.training import ValidationSet, holdout_rows

ROWS = 400  # instances sent per scenario: 4 requests of 100
TOLERANCE = 0.05  # |live − checkpoint| coverage after ROWS instances (each view's band is ≥ this wide too)


@pytest.fixture(scope="module")
def data():
    return mvi.load_dataset("digits-halves")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data):
    imp = mvi.MultiViewImputer(
        "jpvae", epochs=4, hidden=[32], latent_dim=4, batch_size=128, seed=0, device="cpu", progress=False,
        likelihoods={"top": "gaussian", "bottom": "gaussian"},  # standardised views, any shift allowed
    )  # fmt: skip
    return imp.fit(data).save(tmp_path_factory.mktemp("monitoring") / "model.pt")


@pytest.fixture(scope="module")
def imputer(checkpoint):
    return mvi.MultiViewImputer.load(checkpoint)


def shifted(data, rows, sd_shift: float = 0.0, view: str = "top"):
    """Rows of `data` with `view` moved by `sd_shift` training sds of each feature."""
    part = data.subset(rows)
    views = dict(part.views)
    views[view] = views[view] + sd_shift * np.nanstd(data.views[view], 0)
    return part.with_views(views)


# ----------------------------------------------------------------------------- the maths


def test_live_scores_match_an_independent_computation(imputer, data):
    """Coverage, width, CRPS and RMSE of one monitored request, recomputed from the imputer's public
    intervals, draws and mean on the very entries the monitor hid (same masks, same torch seed)."""
    part = imputer.schema_.check(data.subset(np.arange(100)))
    monitor = Monitor.for_imputer(imputer, share=1.0, seed=7)
    assert monitor.sampled()
    monitor.observe(part)
    live = monitor.summary()["views"]

    tag = 7 + 1  # the first monitored request's seed
    cfg = imputer.train_config
    val = ValidationSet.from_batch(imputer.schema_.to_batch(part), cfg.val_hide_frac, cfg.val_view_frac, tag)
    corrupted = {v: np.where(val.hidden[v].numpy(), np.nan, part.views[v]) for v in part.views}
    n = cfg.calibration_samples
    got = {}
    for level in (0.5, 0.9):
        torch.manual_seed(tag)  # the raw draws the monitor's intervals came from
        got[level] = imputer.predict_interval(corrupted, level=level, n_samples=n)
    torch.manual_seed(tag)
    draws = imputer.sample(corrupted, n_samples=n)
    mean = imputer.transform(corrupted)
    for v in part.views:  # monitoring scores in the model's scaled space
        scale = imputer.schema_.scalers[v].transform
        h = val.hidden[v].numpy()
        y = scale(part.views[v])[h]
        cal = live[v]["calibration"]
        assert cal["entries"] == h.sum() and cal["rows"] == h.any(1).sum()
        for level in (0.5, 0.9):
            lo, hi = scale(got[level][0][v])[h], scale(got[level][1][v])[h]
            pct = round(level * 100)
            assert cal[f"coverage_{pct}"]["live"] == pytest.approx(np.mean((y >= lo) & (y <= hi)), abs=1e-9)
            assert cal[f"width_{pct}"]["live"] == pytest.approx(np.mean(hi - lo), rel=1e-5)
        crps = np.mean(sr.crps_ensemble(y, scale(draws[v])[:, h], m_axis=0))
        assert cal["crps"]["live"] == pytest.approx(crps, rel=1e-4)
        assert cal["rmse"]["live"] == pytest.approx(np.sqrt(np.mean((scale(mean[v])[h] - y) ** 2)), rel=1e-4)
    assert {k: part.views[k].tolist() for k in part.views} == {
        k: data.subset(np.arange(100)).views[k].tolist() for k in part.views
    }  # the request's data is left as it was


def test_drift_matches_numpy_psi_and_mean_shift(imputer, data):
    """PSI over the training deciles and the standardised mean shift, against np.histogram / np.nanmean
    on the training rows the checkpoint's reference came from."""
    ref = imputer.monitoring_reference_
    cfg = imputer.train_config
    train_rows, _ = holdout_rows(data.index, cfg.val_frac, cfg.seed)  # the rows fit trained on
    rows = np.arange(300)
    live = shifted(data, rows, 0.5)
    monitor = Monitor.for_imputer(imputer, share=1.0)
    monitor.sampled()
    monitor.observe(imputer.schema_.check(live))
    drift = monitor.summary()["views"]["top"]["drift"]

    scale = imputer.schema_.scalers["top"].transform
    train = scale(data.views["top"][train_rows])
    x = scale(live.views["top"])
    edges = np.quantile(train, np.arange(1, 10) / 10, axis=0)
    np.testing.assert_allclose(np.asarray(ref["views"]["top"]["quantile_edges"]), edges)
    psis, shifts = [], []
    for j in range(train.shape[1]):
        cuts = np.concatenate([[-np.inf], edges[:, j], [np.inf]])
        # bins [e_k, e_{k+1}) as the reference cuts them: np.histogram's are the same, bar the last edge
        q = np.array(
            [np.mean((train[:, j] >= a) & (train[:, j] < b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        )
        p = np.array([np.mean((x[:, j] >= a) & (x[:, j] < b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)])
        q, p = np.maximum(q, 1e-4), np.maximum(p, 1e-4)
        psis.append(np.sum((p - q) * np.log(p / q)))
        sd = train[:, j].std()
        if sd > 1e-6:
            shifts.append(abs(x[:, j].mean() - train[:, j].mean()) / sd)
    assert drift["psi"]["mean"] == pytest.approx(np.mean(psis), rel=1e-9)
    assert drift["psi"]["max"] == pytest.approx(np.max(psis), rel=1e-9)
    assert drift["mean_shift"]["mean"] == pytest.approx(np.mean(shifts), rel=1e-9)
    assert drift["missing_share"] == {"live": 0.0, "reference": 0.0}


def test_missing_view_share_and_the_coverage_band(imputer, data):
    monitor = Monitor.for_imputer(imputer, share=1.0)
    part = imputer.schema_.check(data.subset(np.arange(40)))
    views = dict(part.views)
    views["bottom"] = views["bottom"].copy()
    views["bottom"][:10] = np.nan  # a quarter of the instances lack the view
    monitor.sampled()
    monitor.observe(part.with_views(views))
    s = monitor.summary()["views"]
    assert s["bottom"]["drift"]["missing_share"]["live"] == pytest.approx(0.25)
    assert s["top"]["drift"]["missing_share"]["live"] == 0.0
    assert s["top"]["calibration"]["band"]["coverage_90"] is None  # under MIN_ROWS: not judged
    live = {"rows": 400, "coverage_50": 0.5, "coverage_90": 0.80}
    state, bands = monitoring.coverage_state(live, {"coverage_50": 0.5, "coverage_90": 0.9})
    assert state == "degraded" and bands["coverage_90"] == pytest.approx([0.85, 0.95])
    assert monitoring.coverage_state({**live, "coverage_90": 0.86}, {"coverage_90": 0.9})[0] == "ok"
    assert monitoring.coverage_state({**live, "rows": 99}, {})[0] == "ok"  # too few to judge


def test_old_checkpoint_says_the_reference_is_unavailable(imputer, checkpoint, tmp_path, data):
    state = torch.load(checkpoint, weights_only=True)
    del state["monitoring"]
    torch.save(state, tmp_path / "old.pt")
    old = mvi.MultiViewImputer.load(tmp_path / "old.pt")
    assert old.monitoring_reference_ is None
    monitor = Monitor.for_imputer(old, share=1.0)
    monitor.sampled()
    monitor.observe(old.schema_.check(data.subset(np.arange(20))))
    s = monitor.summary()
    assert s["reference"] == "unavailable"
    cal = s["views"]["top"]["calibration"]
    assert cal["coverage_90"]["reference"] is None and cal["coverage_90"]["live"] is not None
    assert "psi" not in s["views"]["top"]["drift"]


def test_bad_settings_are_refused():
    from pydantic import ValidationError

    from mvimpute.endpoint import AppArgs

    with pytest.raises(ValueError, match="share"):
        Monitor(None, None, share=1.5)
    with pytest.raises(ValidationError, match="monitor_share"):
        AppArgs(monitor_share=2)
    with pytest.raises(ValidationError, match="monitor_window"):
        AppArgs(monitor_window=3)


# ----------------------------------------------------------------------------- served


@pytest.fixture(scope="module")
def served(ray_session, checkpoint):
    """Three apps on one checkpoint: monitoring on (every request), off, and one to feed a shifted view."""
    from ray import serve
    from test_platform import _free_port

    from mvimpute.endpoint import build_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = {"checkpoint": str(checkpoint), "device": "cpu", "num_cpus": 0.25, "seed": 0, "monitor_window": 1000}
    for name, share in (("on", 1.0), ("off", 0.0), ("shifted", 1.0)):
        serve.run(
            build_app({**common, "monitor_share": share, "name": f"Imputer_{name}"}), name=name, route_prefix=f"/{name}"
        )
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def requests_of(part) -> list[dict]:
    """ROWS instances as 4 requests of 100, a tenth of the entries already missing, with draws and intervals."""
    mask = np.random.default_rng(3).random(part.views["top"].shape) < 0.1
    out = []
    for start in range(0, part.n_samples, 100):
        instances = []
        for i in range(start, start + 100):
            top = [None if m else float(x) for x, m in zip(part.views["top"][i], mask[i], strict=True)]
            instances.append({"top": top, "bottom": part.views["bottom"][i].tolist()})
        out.append({"instances": instances, "return": ["mean", "std", "interval"], "n_samples": 20})
    return out


@pytest.fixture(scope="module")
def replies(served, data):
    """The same training-distribution requests, one after another, to the apps with monitoring on and off."""
    bodies = requests_of(data.subset(np.arange(ROWS)))
    out = {}
    for app in ("on", "off"):
        out[app] = []
        for body in bodies:
            status, reply = call(served, f"/{app}/impute", body)
            assert status == 200, reply
            out[app].append(reply)
    return out


def test_responses_are_the_same_with_monitoring_on_and_off(replies, served):
    on, off = replies["on"], replies["off"]
    assert [r["predictions"] for r in on] == [r["predictions"] for r in off]
    assert on[0]["predictions"][0]["std"]["top"] != off[1]["predictions"][0]["std"]["top"]  # draws do vary
    status, mon = call(served, "/off/monitoring")
    assert status == 200 and mon["requests_monitored"] == 0 and mon["requests_seen"] == 4


def test_training_distribution_keeps_coverage_and_state_ok(replies, served, imputer):  # noqa: ARG001
    status, mon = call(served, "/on/monitoring")
    assert status == 200, mon
    assert mon["reference"] == "available" and mon["requests_monitored"] == 4 and mon["instances_in_window"] == ROWS
    assert "checkpoint" not in mon["model"] and mon["model"]["model"] == "jpvae"
    ref = imputer.monitoring_reference_["validation"]
    for v, view in mon["views"].items():
        cal = view["calibration"]
        assert cal["rows"] >= monitoring.MIN_ROWS, cal
        for key in ("coverage_50", "coverage_90"):
            assert cal[key]["reference"] == pytest.approx(ref[v][key])
            assert abs(cal[key]["live"] - cal[key]["reference"]) <= TOLERANCE, (v, key, cal[key])
        assert view["state"] == "ok"
        assert view["drift"]["psi_alert"] == "none" and view["drift"]["mean_shift"]["mean"] < 0.25


def test_a_shifted_view_moves_drift_and_coverage_and_degrades_on_prometheus(served, data, ray_session):
    for body in requests_of(shifted(data, np.arange(ROWS), 2.0)):
        status, reply = call(served, "/shifted/impute", body)
        assert status == 200, reply
    status, mon = call(served, "/shifted/monitoring")
    assert status == 200
    top = mon["views"]["top"]
    assert top["state"] == "degraded"
    assert top["drift"]["mean_shift"]["mean"] == pytest.approx(2.0, abs=0.3)
    assert top["drift"]["psi_alert"] == "significant"
    cal = top["calibration"]
    assert cal["coverage_90"]["live"] < cal["band"]["coverage_90"][0]
    assert cal["crps"]["live"] > 1.5 * cal["crps"]["reference"]

    # Ray exports Serve's custom metrics on each node's metrics port (reported every few seconds)
    port = ray_session.nodes()[0]["MetricsExportPort"]
    deadline, text = time.monotonic() + 90, ""
    wanted = "ray_mvimpute_monitor_degraded{"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError:
            text = ""
        lines = [ln for ln in text.splitlines() if ln.startswith(wanted) and 'view="top"' in ln and "shifted" in ln]
        if lines:
            break
        time.sleep(1)
    assert lines, f"no {wanted}... view=top line on the metrics endpoint"
    assert float(lines[-1].rsplit(" ", 1)[1]) == 1.0
