"""A cluster on one machine, for rehearsals, tests and benchmarks: several Ray nodes (Ray's own
`ray.cluster_utils.Cluster`, each node its own raylet, as Ray's test suite does) and an S3 bucket
(moto's server), with the standard AWS variables pointing at it.

    with s3_server(folder) as env, local_cluster(trainer_nodes=2) as (cluster, nodes):
        ...   # ray is connected; cluster.add_node / cluster.remove_node(nodes[1]) lose and add nodes

Not part of the package: the package reaches storage only through the AWS variables and Ray only
through `ray.init`, as it does on a real cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

# a lost node is noticed in about 3 s, not the default ~30
SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3(root: str | Path) -> tuple[subprocess.Popen, dict] | tuple[None, None]:
    """moto's S3 server on 127.0.0.1 (its log in `root`), and the AWS variables that point at it;
    (None, None) where moto is not installed."""
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        return None, None
    port = free_port()
    log = Path(root) / "moto.log"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"moto's S3 server did not come up: {log.read_text()[-2000:]}") from None
            time.sleep(0.3)
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return proc, env


@contextmanager
def s3_server(root: str | Path):
    """`start_s3` with its variables set in this process's environment (before Ray starts, so its
    workers inherit them); stopped and unset on exit."""
    proc, env = start_s3(root)
    if env is None:
        raise RuntimeError("moto's S3 server is not installed (pip install 'moto[server]')")
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def create_bucket(name: str) -> None:
    import boto3

    s3 = boto3.client("s3")
    if name not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=name)


@contextmanager
def local_cluster(trainer_nodes: int, head_cpus: int = 1, connect: bool = True, head_args: dict | None = None):
    """A head (`head_cpus`, for the driver's and Ray Data's tasks) and `trainer_nodes` nodes of 1 CPU
    and one `trainer` resource each (so that one worker sits on each); connected with `ray.init`
    unless `connect` is False; shut down whatever happens. `head_args`: more of the head's settings
    (`ray.cluster_utils.Cluster`'s head_node_args, e.g. the dashboard's host and port).

    Ray keeps its sessions, and `Cluster` writes its address, under a fresh short folder
    (`RAY_TMPDIR`): a `ray.init()` elsewhere on the machine must not find this cluster."""
    import ray
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="mvc", dir="/tmp")  # short: Ray's socket paths live under it
    before = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "TMPDIR")}
    os.environ["RAY_TMPDIR"] = os.environ["TMPDIR"] = tmp
    head = {"num_cpus": head_cpus, "_system_config": SYSTEM_CONFIG, **(head_args or {})}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        nodes = [cluster.add_node(num_cpus=1, resources={"trainer": 1}) for _ in range(trainer_nodes)]
        if connect:
            ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
