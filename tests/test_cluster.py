"""Several Ray nodes on this machine (`ray.cluster_utils.Cluster`), the data and checkpoints in an S3
bucket (moto's server), MLflow in a local store: what a cluster run does when a node is lost.
Each scenario runs in its own process (tests/cluster_scenarios.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def run_scenario(name: str, workdir: Path, env: dict, timeout: float = 900) -> dict:
    full = {**os.environ, **env, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", "RAY_ADDRESS": ""}
    full.pop("RAY_ADDRESS")
    done = subprocess.run(
        [sys.executable, str(HERE / "cluster_scenarios.py"), name, str(workdir)],
        cwd=workdir, env=full, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, (done.stdout[-3000:], done.stderr[-6000:])
    return json.loads(lines[-1])


@pytest.mark.slow
def test_a_lost_node_costs_the_run_nothing(s3_env, tmp_path):
    """Two workers on two nodes, data from an s3:// spec, checkpoints to the bucket. After the first
    checkpoint one worker's node is removed and a fresh one added: the run resumes from the bucket's
    last checkpoint on two workers (one on the new node), runs each epoch once, and ends FINISHED in
    MLflow with a registered model that loads back here, in another process."""
    got = run_scenario("train-lose-node", tmp_path, s3_env)
    final = got["final_nodes"]
    assert len(set(final)) == 2 and got["events"]["added"] in final and got["events"]["lost"] not in final, got
    assert got["epochs"] == list(range(1, 7)), got
    assert len(got["attempts"]) >= 2 and got["attempts"][0] == 0 and got["attempts"][-1] >= 1, got
    assert got["mlflow_status"] == "FINISHED", got
    assert sorted(set(got["mlflow_steps"])) == list(range(1, 7)), got

    env = {**s3_env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    code = (
        "import sys; from mvimpute.predictor import Predictor; "
        "p = Predictor.load(model_uri=sys.argv[1], device='cpu'); print(p.info['version'], p.view_names)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code, got["model_uri"]], cwd=tmp_path, env={**os.environ, **env},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "['top', 'bottom']" in loaded.stdout, loaded.stdout
