"""Several Ray nodes on this machine (`ray.cluster_utils.Cluster`), the data and checkpoints in an S3
bucket (moto's server), MLflow in a local store: what a cluster run does when a node is lost.
Each scenario runs once, in its own process (tests/cluster_scenarios.py); the tests read its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

HERE = Path(__file__).resolve().parent


def run_scenario(name: str, workdir: Path, env: dict, timeout: float = 900) -> dict:
    """`tests/cluster_scenarios.py name workdir` with the bucket's variables, a private TMPDIR (the
    cluster's address file must not be found by any other `ray.init()`) and its own MLflow store."""
    tmp = tempfile.mkdtemp(prefix="mvc", dir="/tmp")  # short: Ray's socket paths live under it
    full = {
        **os.environ, **env, "TMPDIR": tmp, "RAY_TMPDIR": tmp,
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    }  # fmt: skip
    full.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, str(HERE / "cluster_scenarios.py"), name, str(workdir)],
        cwd=workdir, env=full, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    (workdir / f"{name}.log").write_text(f"{done.stdout}\n--- stderr ---\n{done.stderr}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, (done.stdout[-3000:], done.stderr[-8000:])
    (workdir / f"{name}.json").write_text(lines[-1])  # what happened, for whoever reads a failure
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def train_story(s3_server, tmp_path_factory):
    if s3_server is None:
        pytest.skip("moto's S3 server is not installed (the k8s extra)")
    workdir = tmp_path_factory.mktemp("cluster-train")
    return workdir, run_scenario("train", workdir, s3_server)


@pytest.mark.slow
def test_two_workers_on_two_nodes_read_and_checkpoint_the_bucket_and_register(train_story, s3_env):
    """The run's workers sit on the two trainer nodes (one each, by node id in its checkpoint), the data
    came from an s3:// spec, the checkpoints are in the bucket, and the registered model loads back
    from the registry in a third process."""
    workdir, story = train_story
    got = story["replaced"]
    assert sorted(got["first_nodes"]) == sorted(story["trainer_nodes"]), got
    env = {**os.environ, **s3_env, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    code = (
        "import sys; from mvimpute.predictor import Predictor; "
        "p = Predictor.load(model_uri=sys.argv[1], device='cpu'); print(p.view_names)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code, got["model_uri"]], cwd=workdir, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "['top', 'bottom']" in loaded.stdout, loaded.stdout


@pytest.mark.slow
def test_a_lost_node_replaced_costs_the_run_nothing(train_story):
    """After the first checkpoint one worker's node is removed and a fresh one added: the run resumes
    from the bucket's last checkpoint on two workers (one on the new node), runs each epoch once, and
    ends FINISHED in MLflow."""
    got = train_story[1]["replaced"]
    final = got["final_nodes"]
    assert len(set(final)) == 2 and got["events"]["added"] in final and got["events"]["lost"] not in final, got
    assert got["epochs"] == list(range(1, 6)), got
    assert got["attempts"][0] == 0 and len(got["attempts"]) >= 2 and got["attempts"][-1] >= 1, got
    assert got["mlflow_status"] == "FINISHED", got
    assert sorted(set(got["mlflow_steps"])) == list(range(1, 6)), got


@pytest.mark.slow
def test_a_lost_node_not_replaced_leaves_an_elastic_run_on_one_worker(train_story):
    """`cluster.min_workers=1`: a node removed after the first checkpoint and none added, the run goes
    on from the bucket's last checkpoint with the one worker left, each epoch once, FINISHED."""
    got = train_story[1]["shrunk"]
    assert got["first_nodes"] and len(set(got["first_nodes"])) == 2, got
    assert got["final_workers"] == 1 and got["events"]["lost"] not in got["final_nodes"], got
    assert got["epochs"] == list(range(1, 6)), got
    assert len(got["attempts"]) >= 2 and got["attempts"][-1] >= 1, got
    assert got["mlflow_status"] == "FINISHED", got
    assert sorted(set(got["mlflow_steps"])) == list(range(1, 6)), got


@pytest.mark.slow
def test_a_sweep_survives_its_driver(s3_env, tmp_path):
    """Storage in the bucket; the sweep's driver killed once two trials finished, whether or not the
    search state Tune stores every `SYNC_PERIOD_S` records them yet; a new driver in a fresh working
    folder continues it with --resume --name and finishes: every trial completed, nothing of the
    state on local disk. No trial runs twice: one MLflow run per trial, and a trial that had finished
    writes no checkpoint after the kill (a restored search that runs it again reports its saved
    final model instead of training)."""
    got = run_scenario("sweep", tmp_path, s3_env)
    finished = {t["trial"] for t in got["before"] if t["status"] == "FINISHED"}
    assert len(finished) >= 2, got
    table = got["table"]
    assert len(table) == 4 and all(row["completed"] for row in table), table
    runs = pd.Series([t["trial"] for t in got["after"]]).value_counts()
    assert set(runs.index) == {row["trial_id"] for row in table}, got["after"]
    assert (runs == 1).all(), got["after"]
    assert all(t["status"] == "FINISHED" for t in got["after"]), got["after"]
    for trial in finished:
        assert got["checkpoints_after"][trial] == got["checkpoints_at_kill"][trial] != [], (trial, got)
    assert got["local_state"] == [], got["local_state"]  # the sweep's state lives in the bucket


@pytest.mark.slow
def test_batch_from_bucket_to_bucket_on_two_nodes_and_through_a_lost_node(s3_env, tmp_path):
    """Two actors on two nodes impute a table from the bucket into the bucket: every row, id, order and
    observed bit as the in-process result. With the node of one actor removed mid-job, either Ray Data
    retries and the output is complete and equal, or the job fails and nothing is visible — never a
    partial table, never a hang."""
    got = run_scenario("batch", tmp_path, s3_env)
    two = got["two"]
    assert two["complete"] and two["rows"] == got["rows"], two
    assert two["ids_in_order"] and two["equal"] and two["observed_kept"], two
    assert len(two["parts_by_node"]) == 2, two  # both actors' nodes wrote parts
    lost = got["lost"]
    assert lost.get("removed") and not lost["hung"], lost
    if lost["error"] is None:
        assert lost["complete"] and lost["rows"] == got["rows"], lost
        assert lost["ids_in_order"] and lost["equal"] and lost["observed_kept"], lost
    else:
        assert not lost["complete"] and lost["visible"] == [], lost


@pytest.mark.slow
def test_the_endpoint_on_two_nodes_loses_one(tmp_path):
    """Two replicas on two nodes under a loopback load; one node removed, a fresh one added: no
    request fails once the client retries once (after 0.5 s) on a connection error or a 5xx, and the app is
    RUNNING again with two replicas and answers /healthz."""
    got = run_scenario("endpoint", tmp_path, {})
    assert got["requests_after_loss"] > 0, got
    assert got["failed_after_retry"] == 0, got
    assert got["app_status"] == "RUNNING" and got["replicas_running"] == [2] and got["healthz"] == 200, got
