import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def ray_session(s3_server):  # noqa: ARG001  (its variables must be set before Ray starts)
    pytest.importorskip("ray.data")
    import ray

    started = not ray.is_initialized()
    if started:
        # the Ray Train controller polls its workers every 2 s by default: finish and recover faster in tests
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(root: Path):
    """moto's S3 server on 127.0.0.1, and the standard AWS variables that point at it; None without moto."""
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        return None, None
    port = _free_port()
    log = root / "moto.log"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail(f"moto's S3 server did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.3)
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return proc, env


@pytest.fixture(scope="session", autouse=True)
def s3_server(tmp_path_factory):
    """One S3 server (moto) for the session, its variables in this process's environment — set before
    any test starts Ray (a command under test may start it too), so that Ray's workers read and write
    the same bucket. None where moto is missing."""
    proc, env = _start_moto(tmp_path_factory.mktemp("s3"))
    if env is not None:
        os.environ.update(env)
    yield env
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def s3_env(s3_server):
    if s3_server is None:
        pytest.skip("moto's S3 server is not installed (the k8s extra)")
    return s3_server
