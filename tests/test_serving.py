"""The endpoint and the registered pyfunc against a real `mlflow server` (SQLite, 127.0.0.1): a small
trained JPVAE registered under an alias, served with `serve.run` on the shared local Ray; HTTP
requests with missing views, draws, intervals; every bad input a 4xx naming the field; schemathesis
over the OpenAPI schema; the alias moving to a new version is picked up without a redeploy."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from http_calls import call  # beside this file
from test_platform import _free_port, mlflow_process, mlflow_server  # noqa: F401  (the same server fixtures)

import mvimpute as mvi
from mvimpute import registry, tracking
from mvimpute.predictor import Predictor

MODEL = "serve-test-jpvae"
MAX_N_SAMPLES = 200
MAX_INSTANCES = 50
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module", autouse=True)
def _boot_mlflow_early(mlflow_process):  # noqa: F811  (the server boots while the models train)
    yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two small JPVAEs on digits-halves (different seeds): versions 1 and 2 of the registered model."""
    root = tmp_path_factory.mktemp("serve-models")
    data = mvi.load_dataset("digits-halves")
    paths = []
    for seed in (0, 1):
        imp = mvi.MultiViewImputer(
            "jpvae", epochs=4, hidden=[32], latent_dim=4, batch_size=128, seed=seed, device="cpu"
        )
        paths.append(imp.fit(data).save(root / f"model{seed}.pt"))
    return paths


@pytest.fixture(scope="module")
def registered(mlflow_server, trained):  # noqa: F811
    run = tracking.start_run("serve-test", "serve-test", tracking_uri=mlflow_server)
    uri = tracking.log_model(run, trained[0], registered_model_name=MODEL)
    tracking.end_run(run)
    registry.set_alias(uri, "champion", mlflow_server)
    return uri


@pytest.fixture(scope="module")
def endpoint(ray_session, mlflow_server, registered):  # noqa: F811
    from ray import serve

    from mvimpute import endpoint

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "model_uri": f"models:/{MODEL}@champion",
        "tracking_uri": mlflow_server,
        "num_cpus": 0.5,
        "max_n_samples": MAX_N_SAMPLES,
        "max_instances": MAX_INSTANCES,
        "max_body_bytes": MAX_BODY,
        "reload_interval_s": 1.0,
        "max_batch_size": 8,
    }
    serve.run(endpoint.build_app(args), name="mvimpute-test", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def digits():
    return mvi.load_dataset("digits-halves").subset(np.arange(10))


def valid_body(digits, **extra):
    return {"instances": [{"top": digits.views["top"][0].tolist(), "bottom": None}], **extra}


# ----------------------------------------------------------------------------- happy path


def test_missing_views_are_filled_and_observed_values_kept(endpoint, digits, trained):
    top, bottom = digits.views["top"], digits.views["bottom"]
    partial = top[3].tolist()
    partial[0] = partial[7] = None
    instances = [
        {"top": top[0].tolist(), "bottom": None},  # second view missing
        {"bottom": bottom[1].tolist()},  # first view left out
        {"top": partial, "bottom": bottom[3].tolist()},  # entries missing inside a view
    ]
    status, reply = call(endpoint, "/impute", {"instances": instances, "ids": ["a", 7, "c"]})
    assert status == 200, reply
    assert reply["model"]["name"] == MODEL and reply["model"]["version"] == "1"
    assert reply["model"]["run_id"] and reply["model"]["alias"] == "champion" and reply["model"]["model"] == "jpvae"
    assert "checkpoint" not in reply["model"] and "/" not in json.dumps(reply["model"]).replace("models:/", "")
    preds = reply["predictions"]
    assert [p["id"] for p in preds] == ["a", 7, "c"]
    assert preds[0]["mean"]["top"] == top[0].tolist() and preds[1]["mean"]["bottom"] == bottom[1].tolist()
    assert [x for i, x in enumerate(preds[2]["mean"]["top"]) if i not in (0, 7)] == [
        x for i, x in enumerate(partial) if i not in (0, 7)
    ]
    for p in preds:
        for v in ("top", "bottom"):
            vals = np.array(p["mean"][v])
            assert vals.shape == (32,) and np.isfinite(vals).all() and ((vals >= 0) & (vals <= 1)).all()
        assert set(p) == {"id", "mean"}  # nothing asked beyond the mean
    # the model the registry holds, run here: the same completion
    local = Predictor.from_checkpoint(trained[0], device="cpu")
    ref = local.predict(local.check_instances(instances)).mean
    np.testing.assert_allclose([p["mean"]["bottom"] for p in preds], ref["bottom"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose([p["mean"]["top"] for p in preds], ref["top"], rtol=1e-6, atol=1e-7)
    # the completion is informative: closer to the hidden bottom halves than the column mean
    truth = bottom[0]
    assert (
        np.sqrt(np.mean((np.array(preds[0]["mean"]["bottom"]) - truth) ** 2))
        < np.sqrt(np.mean((mvi.load_dataset("digits-halves").views["bottom"].mean(0) - truth) ** 2)) * 1.5
    )


def test_draws_std_and_intervals(endpoint, digits):
    body = valid_body(digits, n_samples=40, level=0.8, **{"return": ["mean", "std", "interval", "samples"]})
    body["instances"].append({"top": None, "bottom": digits.views["bottom"][2].tolist()})
    status, reply = call(endpoint, "/impute", body)
    assert status == 200, reply
    assert reply["n_samples"] == 40 and reply["level"] == 0.8
    for p, missing in zip(reply["predictions"], ("bottom", "top"), strict=True):
        observed = "top" if missing == "bottom" else "bottom"
        draws = np.array(p["samples"][missing])
        assert draws.shape == (40, 32) and np.array(p["samples"][observed]).shape == (40, 32)
        mean, std = np.array(p["mean"][missing]), np.array(p["std"][missing])
        lo, hi = np.array(p["lower"][missing]), np.array(p["upper"][missing])
        assert (np.array(p["std"][observed]) == 0).all()
        # draws differ for most missing pixels; a pixel drawn the same every time sits on a bound (an atom)
        assert (std > 0).mean() > 0.75 and np.isin(draws[:, std == 0], (0.0, 1.0)).all()
        np.testing.assert_allclose(std, draws.std(0, ddof=1), rtol=1e-9)
        assert (0 <= lo).all() and (lo <= hi).all() and (hi <= 1).all()  # `bounded` views: [0, 1]
        assert np.isin(lo[lo == hi], (0.0, 1.0)).all()  # a point interval only on an atom at a bound
        # the interval and the returned draws are both calibrated: about 80 % of the draws fall inside
        # (more where an atom at 0 sits inside). The model's mean need not: a bounded entry whose
        # calibrated 80 % interval is {0} can have a raw predictive mean above 0 (this 4-epoch model's
        # raw draws are wide, so calibration shrinks them hard).
        inside = ((draws >= lo) & (draws <= hi)).mean()
        assert 0.7 < inside < 0.95, inside
        assert ((0 <= mean) & (mean <= 1)).all()
        assert p["lower"][observed] == p["upper"][observed] == p["mean"][observed]
        assert all(row == p["mean"][observed] for row in p["samples"][observed])


def test_metadata_and_health_match_the_model(endpoint, trained):
    status, meta = call(endpoint, "/metadata")
    assert status == 200
    local = Predictor.from_checkpoint(trained[0], device="cpu")
    assert meta["name"] == MODEL and meta["alias"] == "champion" and meta["version"] in ("1", "2")
    assert meta["model"] == "jpvae"
    assert {v: (d["width"], d["likelihood"]) for v, d in meta["views"].items()} == {
        v: (local.dims[v], local.schema.likelihoods[v]) for v in local.view_names
    }
    assert meta["serving"]["max_n_samples"] == MAX_N_SAMPLES and meta["serving"]["batching"] is True
    assert meta["calibration"]["fitted"] is True  # the model's conformal calibration, as Predictor reports it
    if meta["version"] == "1":
        assert meta["calibration"] == json.loads(json.dumps(local.calibration()))
    status, health = call(endpoint, "/healthz")
    assert status == 200 and health["status"] == "ok"
    with urllib.request.urlopen(endpoint + "/docs", timeout=30) as r:
        assert r.status == 200 and b"swagger" in r.read().lower()
    status, schema = call(endpoint, "/openapi.json")
    assert "/impute" in schema["paths"] and "ImputeRequest" in json.dumps(schema)


# ----------------------------------------------------------------------------- bad input


def _bad_cases(digits):
    top = digits.views["top"][0].tolist()
    wide = [{"top": top}] * (MAX_INSTANCES + 1)
    big = [{"top": [0.123456789012345] * 32}] * (MAX_INSTANCES - 1)
    inf_text = json.dumps({"instances": [{"top": top}]}).replace(str(top[4]), "Infinity", 1)
    return [
        ("unknown view", {"instances": [{"top": top}, {"topp": top}]}, 422, ["body", "instances", 1, "topp"]),
        ("wrong width", {"instances": [{"top": top[:31]}]}, 422, ["body", "instances", 0, "top"]),
        ("string", {"instances": [{"top": [*top[:5], "0.5", *top[6:]]}]}, 422, ["body", "instances", 0, "top", 5]),
        ("boolean", {"instances": [{"top": [True, *top[1:]]}]}, 422, ["body", "instances", 0, "top", 0]),
        ("infinity literal", inf_text.encode(), 422, ["body", "instances", 0, "top", 4]),
        (
            "overflow to inf",
            json.dumps({"instances": [{"top": top}]}).replace(str(top[2]), "1e999", 1).encode(),
            422,
            ["body", "instances", 0, "top", 2],
        ),
        (
            "all views missing",
            {"instances": [{"top": top}, {"top": None, "bottom": None}]},
            422,
            ["body", "instances", 1],
        ),
        ("all entries null", {"instances": [{"top": [None] * 32}]}, 422, ["body", "instances", 0]),
        (
            "outside a bounded view's range",
            {"instances": [{"top": top}, {"bottom": [*top[:3], 1.5, *top[4:]]}]},
            422,
            ["body", "instances", 1, "bottom"],
        ),
        (
            "n_samples over cap",
            valid_body(digits, n_samples=MAX_N_SAMPLES + 1, **{"return": ["std"]}),
            422,
            ["body", "n_samples"],
        ),
        ("n_samples negative", valid_body(digits, n_samples=-1), 422, ["body", "n_samples"]),
        ("unknown return", valid_body(digits, **{"return": ["median"]}), 422, ["body", "return", 0]),
        ("level", valid_body(digits, level=1.5), 422, ["body", "level"]),
        ("extra field", valid_body(digits, temperature=2), 422, ["body", "temperature"]),
        ("ids mismatch", valid_body(digits, ids=["a", "b"]), 422, ["body", "ids"]),
        ("no instances", {"instances": []}, 422, ["body", "instances"]),
        ("instance not an object", {"instances": [top]}, 422, ["body", "instances", 0]),
        ("too many instances", {"instances": wide}, 422, ["body", "instances"]),
        (
            "body over the limit",
            {"instances": big, "ids": list(range(MAX_INSTANCES - 1)), "pad": "x" * MAX_BODY},
            413,
            ["body"],
        ),
        ("not json", b"{instances: nope", 422, ["body"]),
    ]


def test_every_bad_input_is_a_4xx_naming_the_field_and_the_next_request_succeeds(endpoint, digits):
    for name, body, status, loc in _bad_cases(digits):
        raw = body if isinstance(body, bytes) else None
        got, reply = call(endpoint, "/impute", None if raw else body, raw=raw)
        assert got == status, (name, got, reply)
        locs = [d["loc"] for d in reply["detail"]]
        assert any(list(x[: len(loc)]) == loc for x in locs), (name, locs)
        assert all(d["msg"] for d in reply["detail"]), name
        ok, good = call(endpoint, "/impute", valid_body(digits))
        assert ok == 200, (name, good)
        assert good["predictions"][0]["mean"]["top"] == digits.views["top"][0].tolist()


def test_schemathesis_finds_no_server_error(endpoint, digits):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{endpoint}/openapi.json")
    failures = []
    for path, method, examples in (("/impute", "POST", 60), ("/metadata", "GET", 3), ("/healthz", "GET", 3)):
        operation = schema[path][method]

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call(base_url=endpoint, timeout=60)
            if response.status_code >= 500:
                failures.append((case.body, response.status_code, response.text[:300]))
            assert response.status_code < 500

        run()
    assert not failures, failures[:3]
    assert call(endpoint, "/impute", valid_body(digits))[0] == 200


# ----------------------------------------------------------------------------- registry


def test_pyfunc_takes_params_and_ships_no_benchmark_code(mlflow_server, registered, digits):  # noqa: F811
    from mlflow.tracking import MlflowClient

    model = registry.load_pyfunc(f"models:/{MODEL}@champion", mlflow_server)
    frame = mvi.masking.hide_view(digits, "bottom").data.to_frame()
    point = model.predict(frame)
    assert list(point.columns) == list(frame.columns) and not point.isna().any().any()
    params = {"n_samples": 12, "return": ["mean", "std", "interval", "samples"], "level": 0.5}
    full = model.predict(frame, params=params)
    for c in ("bottom:px44", "top:px03"):
        assert {f"{c}__std", f"{c}__lower", f"{c}__upper", f"{c}__draws"} <= set(full.columns)
    assert (full["bottom:px44__std"] > 0).all() and (full["top:px03__std"] == 0).all()
    # level 0.5 from 12 draws: a narrow, calibrated interval, which the mean of a skewed (bounded)
    # predictive need not lie in; containment of the mean is checked over HTTP at level 0.8
    assert (full["bottom:px44__lower"] <= full["bottom:px44__upper"]).all()
    assert len(full["bottom:px44__draws"].iloc[0]) == 12
    np.testing.assert_array_equal(
        full[list(frame.columns)].to_numpy()[~frame.isna().to_numpy()], frame.to_numpy()[~frame.isna().to_numpy()]
    )
    # the logged code is the package without the benchmarks, the CLI or the Ray Train runner
    client = MlflowClient(mlflow_server)
    mv = client.get_model_version(MODEL, "1")
    local = registry.fetch_checkpoint(f"models:/{MODEL}/1", mlflow_server)[0]
    assert local.name == "model0.pt" and Predictor.from_checkpoint(local, device="cpu").view_names == ["top", "bottom"]
    import mlflow

    code = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(MODEL, mv.version).rstrip("/") + "/code",
        tracking_uri=mlflow_server,
    )
    from pathlib import Path

    shipped = {p.name for p in Path(code).rglob("*.py")}
    assert {"predictor.py", "imputer.py", "tracking.py", "jpvae.py"} <= shipped
    assert not shipped & {"benchmarks.py", "cli.py", "distributed.py", "evaluation.py"}, shipped


def test_moving_the_alias_reloads_the_endpoint(endpoint, mlflow_server, trained, digits):  # noqa: F811
    run = tracking.start_run("serve-test", "serve-test-v2", tracking_uri=mlflow_server)
    uri = tracking.log_model(run, trained[1], registered_model_name=MODEL)
    tracking.end_run(run)
    assert uri.endswith("/2")
    before = call(endpoint, "/impute", valid_body(digits))[1]["predictions"][0]["mean"]["bottom"]
    registry.set_alias(uri, "champion", mlflow_server)
    deadline = time.time() + 60
    while time.time() < deadline and call(endpoint, "/healthz")[1]["model_version"] != "2":
        time.sleep(0.5)
    assert call(endpoint, "/healthz")[1]["model_version"] == "2"
    status, reply = call(endpoint, "/impute", valid_body(digits))
    assert status == 200 and reply["model"]["version"] == "2"
    after = reply["predictions"][0]["mean"]["bottom"]
    ref = Predictor.from_checkpoint(trained[1], device="cpu")
    expected = ref.predict(ref.check_instances(valid_body(digits)["instances"])).mean["bottom"][0]
    np.testing.assert_allclose(after, expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(before, after)
