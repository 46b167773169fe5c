"""Scenarios on a local multi-node Ray cluster (`ray.cluster_utils.Cluster`, separate raylets on this
machine), run in their own process by tests/test_cluster.py: the test session's own Ray cannot
share a process with a second cluster. Prints one JSON line of what happened.

    python tests/cluster_scenarios.py train-lose-node WORKDIR    # AWS_* point at an S3 server
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

BUCKET = "mvimpute-cluster"
# lost nodes are noticed in a few seconds, not the default ~30
SYSTEM = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def s3_spec(workdir: Path) -> Path:
    """digits-halves as two per-view Parquet tables in the bucket, and a spec that names them by URI."""
    import boto3

    import mvimpute as mvi
    from mvimpute import storage

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    data = mvi.load_dataset("digits-halves")
    views = {}
    for v in data.view_names:
        frame = pd.DataFrame(data.views[v], columns=data.columns[v])
        frame.insert(0, "sample_id", np.asarray(data.index).astype(str))
        fs, inner = storage.filesystem(f"s3://{BUCKET}/data/{v}.parquet")
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), inner, filesystem=fs)
        views[v] = {"path": f"s3://{BUCKET}/data/{v}.parquet"}
    spec = workdir / "spec.yaml"
    spec.write_text(yaml.safe_dump({"id_column": "sample_id", "views": views}))
    return spec


def _checkpoints(uri: str) -> list[str]:
    import pyarrow.fs as pafs

    from mvimpute import storage

    fs, inner = storage.filesystem(uri)
    found = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(i.path for i in found if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))


def train_lose_node(workdir: Path) -> dict:
    """Two train workers on two nodes read an s3:// spec and checkpoint to the bucket; after the first
    checkpoint the node of one worker is removed and a fresh node added. The run must go on from its
    last checkpoint with two workers again, and end tracked and registered."""
    import ray
    from ray.cluster_utils import Cluster

    from mvimpute.checkpoint import read_checkpoint
    from mvimpute.jobs.train import train_main

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": SYSTEM})
    trainers = [cluster.add_node(num_cpus=1, resources={"trainer": 1}) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    runs = f"s3://{BUCKET}/runs"
    events: dict = {}

    config = {
        "data": str(s3_spec(workdir)),
        "model": "jpvae",
        "model_params": {"latent_dim": 4, "hidden": [32]},
        "train": {"epochs": 6, "batch_size": 64, "patience": None},
        "cluster": {
            "num_workers": 2,
            "resources_per_worker": {"CPU": 1, "trainer": 1},
            "storage_path": runs,
            "max_failures": 3,
        },
        "mlflow": {"experiment": "cluster", "registered_model_name": "cluster-jpvae", "n_draws": 5},
        "run_name": "lose-node",
    }
    done: dict = {}

    def train() -> None:  # the run in a thread: nodes are added from the main thread (Ray's signal handlers)
        try:
            done["out"] = train_main(config, echo=False)
        except BaseException as err:  # reported below
            done["error"] = err

    runner = threading.Thread(target=train, daemon=True)
    runner.start()
    while not _checkpoints(f"{runs}/lose-node") and runner.is_alive():
        time.sleep(0.2)
    lost = trainers[1]
    events["lost"] = lost.node_id
    cluster.remove_node(lost)
    events["added"] = cluster.add_node(num_cpus=1, resources={"trainer": 1}).node_id
    runner.join()
    if "error" in done:
        raise done["error"]
    out = done["out"]
    state = read_checkpoint(out.checkpoint_path)
    from mvimpute import tracking

    client = tracking.RunRef(tracking.resolve_tracking_uri(), out.run_id, "").client
    return {
        "events": events,
        "trainer_nodes": [n.node_id for n in trainers],
        "epochs": [h["epoch"] for h in state["history"]],
        "attempts": state["attempts"],
        "final_nodes": state["distributed"]["nodes"],
        "checkpoint_nodes": read_checkpoint_nodes(_checkpoints(f"{runs}/lose-node")),
        "mlflow_status": client.get_run(out.run_id).info.status,
        "mlflow_steps": [m.step for m in client.get_metric_history(out.run_id, "train_loss")],
        "model_uri": out.model_uri,
        "checkpoint_uri_prefix": runs,
    }


def read_checkpoint_nodes(dirs: list[str]) -> list[list[str]]:
    """Each checkpoint's worker nodes, oldest first (read from the bucket)."""
    import tempfile

    import pyarrow.fs as pafs

    from mvimpute import storage
    from mvimpute.checkpoint import read_checkpoint

    fs, _ = storage.filesystem(f"s3://{BUCKET}")
    out = []
    for d in dirs:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                pafs.copy_files(f"{d}/model.pt", f"{tmp}/model.pt", source_filesystem=fs)
            except OSError:  # one Ray pruned (checkpoint_config.num_to_keep): its folder may linger
                continue
            out.append(read_checkpoint(tmp)["distributed"].get("nodes"))
    return out


SCENARIOS = {"train-lose-node": train_lose_node}

if __name__ == "__main__":
    name, workdir = sys.argv[1], Path(sys.argv[2])
    print(json.dumps(SCENARIOS[name](workdir)), flush=True)
