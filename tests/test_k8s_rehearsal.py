"""The rehearsal: what the Kubernetes cluster would run, run here. The dev overlay is rendered with
`kubectl kustomize`; each RayJob's `entrypoint` and the RayService's `serveConfigV2` are taken as
written and run with the environment their pods get (the ConfigMap, and the Secret templates filled
with this test's values) against

- a Ray cluster of several nodes on this machine (jobs/local_cluster.py: a head with the manifests'
  `num-cpus` and 1-CPU nodes), token authentication on, with the dashboard's Jobs and Serve APIs;
- the MLflow Deployment on PostgreSQL with its login users and moto's S3 as the bucket
  (tests/k8s_stack.py, as tests/test_tracking_postgres.py runs them).

In order: the train RayJob registers `champion`; the tune RayJob moves `champion`; the RayService's
Serve config, deployed as KubeRay deploys it, answers /healthz and /impute with the reader's login;
the impute RayJob reads the bucket and writes the bucket. Then PostgreSQL is backed up and restored
with the guide's own commands and a fresh MLflow server resolves the same champion.

What differs from the cluster, and only this: Service names are local ports (MLflow, MinIO,
PostgreSQL, the dashboard), the image's /home/ray/mvimpute is this checkout, the Serve proxies listen
on a free port instead of 8000 (pods have their own network; this machine is shared), and the jobs'
sizes come from the ConfigMap keys an operator sets for a short run (MVIMPUTE_EPOCHS,
MVIMPUTE_NUM_SAMPLES). Run it with
    python -m pytest tests/test_k8s_rehearsal.py -q
"""

from __future__ import annotations

import io
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import k8s_manifests as km
import numpy as np
import pytest
import yaml
from k8s_rehearsal import LocalRayCluster, http, job_logs, run_submitter, submitter_command, wait_job
from k8s_stack import ROOT, TrackingStack, free_port, postgres_bin, stop

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MODEL = "mvimpute-jpvae"
# What an operator sets in the ConfigMap mvimpute-env for a short run (the entry points read them as
# --epochs and --num-samples; k8s/base/config.yaml): the command lines stay as the RayJobs write them.
SHORT_RUN = {"MVIMPUTE_EPOCHS": "2", "MVIMPUTE_NUM_SAMPLES": "2"}
JOB_TIMEOUT = 600  # a job on a loaded machine; about a minute each on two idle cores


def _base_env(extra: dict[str, str]) -> dict[str, str]:
    """A process environment with nothing of this test process's own (no AWS_*, MLFLOW_*, RAY_*):
    PATH to this virtualenv (the image's Python), HOME, and `extra`."""
    env = {
        "PATH": f"{BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    return {**env, **extra}


def _group_env(m, spec: dict) -> dict[str, str]:
    """The environment of a Ray cluster's pods (head and every worker group: they must agree)."""
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]]
    containers += [g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]
    envs = [m.env(c) for c in containers]
    assert all(e == envs[0] for e in envs), "the head and the workers of one Ray cluster see different variables"
    return envs[0]


class Rehearsal:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.stack = TrackingStack(root)
        self.m = self.stack.m
        self.m.config.update(SHORT_RUN)
        self.jobs = {d["metadata"]["name"]: d for d in km.jobs("dev")}
        self.token = self.m.secrets["mvimpute-ray-auth"]["auth_token"]
        self.reader = self.m.secrets["mlflow-reader"]
        self.state: dict = {}
        self.clusters: list[LocalRayCluster] = []

    # -- the Ray clusters

    def start_cluster(self, name: str, spec: dict, nodes: int) -> LocalRayCluster:
        """A local cluster with `spec`'s pod environment (the image's PYTHONPATH and WORKDIR are this
        checkout), its head's `num-cpus`, and `nodes` nodes of 1 CPU."""
        env = _base_env({"PYTHONPATH": str(ROOT), **_group_env(self.m, spec)})
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == self.token
        head_cpus = int(spec["headGroupSpec"]["rayStartParams"].get("num-cpus", 1))
        cluster = LocalRayCluster(self.root / name, env, nodes=nodes, head_cpus=head_cpus, cwd=ROOT)
        self.clusters.append(cluster)
        return cluster

    def close(self) -> None:
        for c in self.clusters:
            c.close()
        self.stack.close()

    # -- what KubeRay does

    def submit(self, cluster: LocalRayCluster, job: str) -> dict:
        """The RayJob `job` of the dev overlay, submitted by KubeRay's submitter command with the
        submitter's environment (KubeRay adds only Ray's token to it); the Ray job's record once done."""
        doc = self.jobs[job]
        assert doc["spec"]["clusterSelector"] == {"ray.io/cluster": "mvimpute"}
        # the image keeps jobs/, serve/ and tune_spaces/ in /home/ray/mvimpute: here, this checkout
        entrypoint = doc["spec"]["entrypoint"].replace(km.render.APP_DIR + "/", f"{ROOT}/")
        job_id = f"{job}-{secrets.token_hex(4)}"
        command = submitter_command(cluster.dashboard, job_id, entrypoint, doc["spec"].get("runtimeEnvYAML"))
        env = _base_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token})
        log = self.root / f"{job}.submitter.log"
        rc = run_submitter(command, env, log, timeout=JOB_TIMEOUT + 60)
        record = wait_job(cluster.dashboard, job_id, self.token, timeout=JOB_TIMEOUT)
        (self.root / f"{job}.driver.log").write_text(job_logs(cluster.dashboard, job_id, self.token))
        if record["status"] != "SUCCEEDED" or rc != 0:
            pytest.fail(
                f"{job}: Ray job {record['status']} (submitter exit {rc}): {record.get('message')}\n"
                f"{(self.root / f'{job}.driver.log').read_text()[-6000:]}"
            )
        return record

    # -- MLflow, as the endpoint's user sees it

    def mlflow(self, path: str, port: int | None = None) -> dict:
        url = f"http://127.0.0.1:{port or self.stack.ports['mlflow']}/api/2.0/mlflow/{path}"
        login = (self.reader["MLFLOW_TRACKING_USERNAME"], self.reader["MLFLOW_TRACKING_PASSWORD"])
        status, out = http(url, basic=login, timeout=120)  # a server worker still starting holds a request
        assert status == 200, (url, status, out)
        return out

    def champion(self, port: int | None = None) -> dict:
        return self.mlflow(f"registered-models/alias?name={MODEL}&alias=champion", port)["model_version"]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    pytest.importorskip("ray.serve")
    reh = Rehearsal(tmp_path_factory.mktemp("k8s-rehearsal"))
    try:
        t0 = time.monotonic()
        # the jobs' RayCluster starts beside the tracking stack (their ports are known already)
        jobs = reh.start_cluster("jobs-cluster", reh.m.one("RayCluster", "mvimpute")["spec"], nodes=2)
        reh.stack.start()
        jobs.wait(reh.token)
        reh.state["jobs"] = jobs
        reh.state["timings"] = {"start": round(time.monotonic() - t0, 1)}
        yield reh
    finally:
        reh.close()
        print(f"\nrehearsal timings (s): {reh.state.get('timings')}")


def _timed(reh: Rehearsal, name: str, t0: float) -> None:
    reh.state["timings"][name] = round(time.monotonic() - t0, 1)


def test_ray_authentication_refuses_the_jobs_api_without_the_token(rehearsal):
    status, _ = http(f"{rehearsal.state['jobs'].dashboard}/api/jobs/")
    assert status in (401, 403)
    status, _ = http(f"{rehearsal.state['jobs'].dashboard}/api/jobs/", token=rehearsal.token)
    assert status == 200


def test_train_rayjob_registers_the_champion(rehearsal):
    t0 = time.monotonic()
    rehearsal.submit(rehearsal.state["jobs"], "mvimpute-train")
    _timed(rehearsal, "train", t0)
    champion = rehearsal.champion()
    run = rehearsal.mlflow(f"runs/get?run_id={champion['run_id']}")["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    epochs = [v for k, v in params.items() if k.endswith("epochs")]
    assert epochs and set(epochs) == {SHORT_RUN["MVIMPUTE_EPOCHS"]}, params
    # Ray Train checkpointed to the bucket the RayJob names
    keys = _bucket_keys(rehearsal, "ray_results/")
    assert any("/checkpoint_" in k for k in keys), keys[:20]
    rehearsal.state["train"] = champion


def test_tune_rayjob_moves_the_champion(rehearsal):
    before = rehearsal.state.get("train") or pytest.skip("needs the train RayJob's champion")
    t0 = time.monotonic()
    rehearsal.submit(rehearsal.state["jobs"], "mvimpute-tune")
    _timed(rehearsal, "tune", t0)
    trials = re.findall(r"^trial (\d+)/(\d+) ", (rehearsal.root / "mvimpute-tune.driver.log").read_text(), re.M)
    assert sorted(trials) == [("1", "2"), ("2", "2")], trials  # MVIMPUTE_NUM_SAMPLES from the ConfigMap
    champion = rehearsal.champion()
    assert int(champion["version"]) > int(before["version"]), (before, champion)
    assert champion["run_id"] != before["run_id"]
    rehearsal.state["champion"] = champion


def test_rayservice_serves_the_champion_with_the_readers_login(rehearsal, tmp_path):
    champion = rehearsal.state.get("champion") or pytest.skip("needs the champion of the jobs")
    m = rehearsal.m
    service = m.one("RayService", "mvimpute-serve")["spec"]
    spec = service["rayClusterConfig"]
    env = _group_env(m, spec)
    # the endpoint's pods log in as the reader and hold no bucket keys: models come through MLflow
    assert env["MLFLOW_TRACKING_USERNAME"] == rehearsal.reader["MLFLOW_TRACKING_USERNAME"]
    assert "AWS_SECRET_ACCESS_KEY" not in env
    t0 = time.monotonic()
    (group,) = spec["workerGroupSpecs"]
    cluster = rehearsal.start_cluster("serve-cluster", spec, nodes=group["replicas"])
    try:
        cluster.wait(rehearsal.token)
        # serveConfigV2 as written; the proxies' port only is a free one (8000 in every pod)
        config = yaml.safe_load(service["serveConfigV2"])
        assert config["proxy_location"] == "EveryNode"
        port = free_port()
        config["http_options"]["port"] = port
        path = tmp_path / "serveConfigV2.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        # KubeRay PUTs serveConfigV2 to the dashboard's Serve API, with the cluster's token
        env = _base_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": rehearsal.token})
        out = subprocess.run(
            [BIN / "serve", "deploy", str(path), "--address", cluster.dashboard],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while True:
            try:
                status, health = http(f"{base}/healthz", timeout=10)
            except OSError as err:
                status, health = None, str(err)
            if status == 200:
                break
            if time.time() > deadline:
                _, apps = http(f"{cluster.dashboard}/api/serve/applications/", token=rehearsal.token)
                pytest.fail(f"/healthz: {status} {health}; Serve: {str(apps)[-4000:]}")
            time.sleep(1)
        assert health == {"status": "ok", "model_version": champion["version"]}
        _timed(rehearsal, "serve_ready", t0)

        import mvimpute as mvi

        data = mvi.load_dataset("digits-halves")
        top = data.views["top"][0].astype(float).tolist()
        top[:5] = [None] * 5
        status, body = http(f"{base}/impute", {"instances": [{"top": top, "bottom": None}], "ids": ["s0"]})
        assert status == 200, body
        (pred,) = body["predictions"]
        assert pred["id"] == "s0" and body["model"]["version"] == champion["version"]
        assert len(pred["mean"]["top"]) == len(top) and len(pred["mean"]["bottom"]) == data.views["bottom"].shape[1]
        assert all(np.isfinite(pred["mean"]["top"])) and all(np.isfinite(pred["mean"]["bottom"]))
        assert pred["mean"]["top"][5:] == pytest.approx(top[5:])  # observed entries untouched
        status, body = http(f"{base}/impute", {"instances": [{"top": [1.0, 2.0]}]})
        assert status == 422 and "top" in str(body)
        # a proxy on every node (EveryNode), the application running
        status, apps = http(f"{cluster.dashboard}/api/serve/applications/", token=rehearsal.token)
        assert status == 200 and apps["applications"]["mvimpute"]["status"] == "RUNNING", apps
        assert len(apps["proxies"]) == 1 + group["replicas"], apps["proxies"]
        _timed(rehearsal, "serve", t0)
    finally:
        cluster.close()  # the two cores go back to the jobs' cluster


def test_impute_rayjob_reads_and_writes_the_bucket(rehearsal):
    import pandas as pd

    import mvimpute as mvi

    champion = rehearsal.state.get("champion") or pytest.skip("needs the champion of the jobs")
    del champion
    data = mvi.load_dataset("digits-halves")
    frame = mvi.masking.corrupt(data.subset(np.arange(120)), mcar_rate=0.3, seed=1).data.to_frame()
    frame = frame.reset_index(drop=True)
    observed = frame.notna().to_numpy()
    assert (~observed).any()
    # the input, put into the bucket as the guide does (`mc cp`), signed as the bucket's user
    s3 = rehearsal.stack.s3_client(rehearsal.m.secrets["mvimpute-s3"])
    bucket = rehearsal.m.config["MVIMPUTE_BUCKET"]
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    s3.put_object(Bucket=bucket, Key="data/input/my-views.parquet", Body=buf.getvalue())
    t0 = time.monotonic()
    rehearsal.submit(rehearsal.state["jobs"], "mvimpute-impute")
    _timed(rehearsal, "impute", t0)
    keys = _bucket_keys(rehearsal, "data/imputed/")
    assert "data/imputed/_SUCCESS" in keys, keys
    parts = sorted(k for k in keys if re.search(r"/part-\d+\.parquet$", k))
    assert parts, keys
    out = pd.concat(
        [pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=k)["Body"].read())) for k in parts],
        ignore_index=True,
    )
    assert len(out) == len(frame)
    got = out[list(frame.columns)].to_numpy()
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got[observed], frame.to_numpy()[observed], rtol=1e-6)


def _bucket_keys(rehearsal: Rehearsal, prefix: str) -> list[str]:
    s3 = rehearsal.stack.s3_client(rehearsal.m.secrets["mvimpute-s3"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=rehearsal.m.config["MVIMPUTE_BUCKET"], Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _guide_pg_commands() -> tuple[str, str]:
    """The commands docs/kubernetes.md runs inside the PostgreSQL pod (`kubectl exec … -- sh -c '…'`)
    to back up and to restore the registry."""
    guide = (ROOT / "docs/kubernetes.md").read_text()
    found = re.findall(r"kubectl -n mvimpute exec (?:-i )?mlflow-postgres-0 -- sh -c '([^']+)'", guide)
    (dump,) = [c for c in found if c.startswith("pg_dump ")]
    (restore,) = [c for c in found if c.startswith("pg_restore ")]
    return dump, restore


def test_postgres_backup_and_restore_keep_the_champion(rehearsal):
    """The guide's pg_dump, then its pg_restore into a fresh database (as a fresh infrastructure's
    PostgreSQL creates it), the MLflow Deployment's init container and server on that database: the
    champion resolves to the same version and run."""
    champion = rehearsal.state.get("champion") or pytest.skip("needs the champion of the jobs")
    dump_cmd, restore_cmd = _guide_pg_commands()
    stack, root = rehearsal.stack, rehearsal.root
    pg = rehearsal.m.secrets["mlflow-postgres"]
    bin_dir = postgres_bin()

    def pod_shell(command: str, db: str, **io_) -> None:
        # inside the pod: POSTGRES_* from its Secret, the server on the local socket (here: its folder)
        env = {
            "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin",
            "POSTGRES_USER": pg["POSTGRES_USER"],
            "POSTGRES_DB": db,
            "PGHOST": str(root),
            "PGPORT": str(stack.ports["mlflow-postgres"]),
        }
        out = subprocess.run(["sh", "-c", command], env=env, stderr=subprocess.PIPE, timeout=120, **io_)
        assert out.returncode == 0, f"{command}: {out.stderr.decode()[-3000:]}"

    backup = root / "mlflow.dump"
    with open(backup, "wb") as f:
        pod_shell(dump_cmd, pg["POSTGRES_DB"], stdout=f)
    assert backup.stat().st_size > 0
    fresh = "mlflow_restored"
    subprocess.run(
        [bin_dir / "createdb", "-h", str(root), "-p", str(stack.ports["mlflow-postgres"]), "-U", pg["POSTGRES_USER"],
         fresh], check=True, timeout=60,
    )  # fmt: skip
    with open(backup, "rb") as f:
        pod_shell(restore_cmd, fresh, stdin=f)

    m = stack.with_database(fresh)
    port = free_port()
    stack.run_auth_init(root / "mlflow-auth-restored", times=1, m=m)
    server = stack.start_mlflow(port, root / "mlflow-auth-restored", root / "mlflow-restored.log", m=m)
    try:
        restored = rehearsal.champion(port)
        assert (restored["version"], restored["run_id"]) == (champion["version"], champion["run_id"])
        run = rehearsal.mlflow(f"runs/get?run_id={restored['run_id']}", port)["run"]
        assert run["info"]["status"] == "FINISHED"
    finally:
        stop(server)


def test_gpu_overlay_runs_what_dev_runs_but_the_gpu_training():
    """The gpu overlay's tune and impute RayJobs and its Serve applications are dev's (rehearsed above);
    its train entry point differs only by the GPU workers (`--num-workers 2 --use-gpu`), which need a
    GPU node (parsed, not run: tests/test_k8s_entrypoints.py)."""
    dev = {d["metadata"]["name"]: d["spec"]["entrypoint"] for d in km.jobs("dev")}
    gpu = {d["metadata"]["name"]: d["spec"]["entrypoint"] for d in km.jobs("gpu")}
    assert gpu["mvimpute-tune"] == dev["mvimpute-tune"] and gpu["mvimpute-impute"] == dev["mvimpute-impute"]
    assert gpu["mvimpute-train"].replace("--num-workers 2 --use-gpu", "--num-workers 1") == dev["mvimpute-train"]

    def apps(env: str) -> list[dict]:
        config = yaml.safe_load(km.one(km.app(env), "RayService", "mvimpute-serve")["spec"]["serveConfigV2"])
        for app in config["applications"]:
            app["args"].pop("min_replicas")
            app["args"].pop("max_replicas")
        return config

    assert apps("gpu") == apps("dev")
