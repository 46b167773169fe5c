"""What the Kubernetes cluster runs, run here (tests/test_k8s_rehearsal.py): a Ray cluster of several
nodes on this machine with the environment of a RayCluster's pods, the RayJobs submitted as KubeRay's
submitter Job submits them, and the RayService's `serveConfigV2` deployed through the dashboard as
KubeRay deploys it.

    python tests/k8s_rehearsal.py cluster INFO.json NODES HEAD_CPUS
        # a head (HEAD_CPUS) and NODES nodes of 1 CPU (jobs/local_cluster.py), the dashboard on a free
        # port; writes the addresses to INFO.json and runs until its stdin closes or it is terminated

The cluster runs in its own process, with the pods' environment: the test process keeps its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# KubeRay's submitter waits for this before it submits (utils.RayDashboardGCSHealthPath)
GCS_HEALTH = "api/gcs_healthz"


def cluster_main(info_path: str, nodes: int, head_cpus: float) -> None:
    sys.path.insert(0, str(ROOT / "jobs"))
    from local_cluster import free_port, local_cluster

    def _terminate(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    dashboard = free_port()
    head_args = {
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": dashboard,
        "dashboard_agent_listen_port": free_port(),
    }
    with local_cluster(nodes, head_cpus=head_cpus, connect=False, head_args=head_args) as (cluster, _):
        info = {
            "address": cluster.address,
            "dashboard": f"http://127.0.0.1:{dashboard}",
            "ray_tmpdir": os.environ["RAY_TMPDIR"],
        }
        tmp = Path(info_path + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.rename(info_path)
        sys.stdin.read()  # until the test closes the pipe (or dies)


class LocalRayCluster:
    """`cluster_main` in a subprocess with `env` (the pods' environment) and cwd `cwd` (the image's
    WORKDIR, localized); `dashboard` once the dashboard's GCS health check answers."""

    def __init__(self, workdir: Path, env: dict[str, str], nodes: int, head_cpus: float, cwd: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.info_path = self.workdir / "cluster.json"
        self.log = self.workdir / "cluster.log"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "cluster", str(self.info_path), str(nodes), str(head_cpus)],
            stdin=subprocess.PIPE,
            stdout=open(self.log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
        self.info: dict = {}

    def wait(self, token: str | None, timeout: float = 180) -> dict:
        deadline = time.time() + timeout
        while not self.info_path.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the local Ray cluster did not start: {self.log.read_text()[-4000:]}")
            time.sleep(0.3)
        self.info = json.loads(self.info_path.read_text())
        while True:
            try:
                status, _ = http(f"{self.info['dashboard']}/{GCS_HEALTH}", token=token, timeout=5)
                if status == 200:
                    return self.info
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the dashboard did not come up: {self.log.read_text()[-4000:]}")
            time.sleep(0.5)

    @property
    def dashboard(self) -> str:
        return self.info["dashboard"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
        if self.info.get("ray_tmpdir", "").startswith("/tmp/mvc"):  # Ray's sessions (the drivers' logs are kept)
            shutil.rmtree(self.info["ray_tmpdir"], ignore_errors=True)


def http(
    url: str,
    body: dict | None = None,
    token: str | None = None,
    basic: tuple[str, str] | None = None,
    timeout: float = 30,
    method: str | None = None,
) -> tuple[int, object]:
    """(status, parsed JSON or text) of a request; HTTP errors are returned, not raised."""
    import base64

    headers = {"content-type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def submitter_command(address: str, job_id: str, entrypoint: str, runtime_env_yaml: str | None = None) -> str:
    """The shell command KubeRay 1.7's submitter Job runs for a RayJob in K8sJobMode
    (ray-operator/controllers/ray/common/job.go, BuildJobSubmitCommand), joined with spaces and run by
    `/bin/bash -ce`: the entrypoint is pasted into the line as it is written in the RayJob."""
    import yaml

    health = f"{address}/{GCS_HEALTH}"
    probe = f"python -c \"import urllib.request; urllib.request.urlopen('{health}', timeout=2)\""
    cmd = ["until", probe, ">/dev/null", "2>&1", ";", "do", "echo", '"waiting for the dashboard"', ";", "sleep",
           "2", ";", "done", ";"]  # fmt: skip
    cmd += ["if", "!", "ray", "job", "status", "--address", address, job_id, ">/dev/null", "2>&1", ";", "then"]
    cmd += ["ray", "job", "submit", "--address", address, "--no-wait"]
    if runtime_env_yaml:
        cmd += ["--runtime-env-json", json.dumps(json.dumps(yaml.safe_load(runtime_env_yaml)))]
    cmd += ["--submission-id", job_id, "--", entrypoint.strip(), ";", "fi", ";"]
    cmd += ["ray", "job", "logs", "--address", address, "--follow", job_id]
    return " ".join(cmd)


def run_submitter(command: str, env: dict[str, str], log: Path, timeout: float) -> int:
    """`/bin/bash -ce COMMAND` (the submitter container's command and args) with `env`; its output in `log`."""
    with open(log, "wb") as out:
        done = subprocess.run(
            ["/bin/bash", "-ce", "--", command], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        )
    return done.returncode


def wait_job(dashboard: str, job_id: str, token: str, timeout: float) -> dict:
    """The Ray job's record once it has ended (what KubeRay reads into the RayJob's jobStatus)."""
    deadline = time.time() + timeout
    while True:
        status, job = http(f"{dashboard}/api/jobs/{job_id}", token=token)
        if status == 200 and job.get("status") in ("SUCCEEDED", "FAILED", "STOPPED"):
            return job
        if time.time() > deadline:
            raise TimeoutError(f"job {job_id} still {job if status == 200 else status} after {timeout:.0f} s")
        time.sleep(1)


def job_logs(dashboard: str, job_id: str, token: str) -> str:
    status, out = http(f"{dashboard}/api/jobs/{job_id}/logs", token=token)
    return out.get("logs", "") if status == 200 and isinstance(out, dict) else str(out)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "cluster":
        raise SystemExit(__doc__)
    cluster_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
