import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny nets: extra torch threads only add overhead (3× slower on a shared 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


def _local_cluster_module():
    """jobs/local_cluster.py (beside the package, not in it), loaded by path."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "jobs" / "local_cluster.py"
    spec = importlib.util.spec_from_file_location("local_cluster", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def s3_server(tmp_path_factory):
    """One S3 server (moto) for the session, its variables in this process's environment — set before
    any test starts Ray (a command under test may start it too), so that Ray's workers read and write
    the same bucket. None where moto is missing."""
    try:
        proc, env = _local_cluster_module().start_s3(tmp_path_factory.mktemp("s3"))
    except RuntimeError as err:
        pytest.fail(str(err))
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
