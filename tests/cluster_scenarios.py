"""Scenarios on a local multi-node Ray cluster (`ray.cluster_utils.Cluster`: a head and worker nodes as
separate raylets on this machine, 1 CPU each), run in their own process by tests/test_cluster.py — the
test session's own Ray cannot share a process with a second cluster. Each prints one JSON line of
what happened; the tests assert on it.

    python tests/cluster_scenarios.py SCENARIO WORKDIR    # AWS_* point at an S3 server, TMPDIR private

The cluster and the bucket helpers are jobs/local_cluster.py's (a private Ray temp folder, so no
other `ray.init()` on the machine finds this cluster).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
from local_cluster import create_bucket, free_port, local_cluster  # noqa: E402  (jobs/, beside the package)

BUCKET = "mvimpute-cluster"


def s3_spec(workdir: Path, rows: int | None = None) -> Path:
    """digits-halves as two per-view Parquet tables in the bucket, and a spec that names them by URI."""
    import mvimpute as mvi
    from mvimpute import storage

    create_bucket(BUCKET)
    data = mvi.load_dataset("digits-halves")
    n = rows or data.n_samples
    views = {}
    for v in data.view_names:
        frame = pd.DataFrame(data.views[v][:n], columns=data.columns[v])
        frame.insert(0, "sample_id", np.asarray(data.index[:n]).astype(str))
        uri = f"s3://{BUCKET}/data/{v}.parquet"
        fs, inner = storage.filesystem(uri)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), inner, filesystem=fs)
        views[v] = {"path": uri}
    spec = workdir / "spec.yaml"
    spec.write_text(yaml.safe_dump({"id_column": "sample_id", "views": views}, sort_keys=False))
    return spec


def whole_checkpoints(uri: str) -> list[str]:
    """The run's checkpoint folders in the bucket that hold a whole checkpoint, oldest first."""
    import pyarrow.fs as pafs

    from mvimpute import storage
    from mvimpute.checkpoint import CHECKPOINT_FILE

    fs, inner = storage.filesystem(uri)
    found = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    dirs = sorted(i.path for i in found if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    return [d for d in dirs if fs.get_file_info(f"{d}/{CHECKPOINT_FILE}").type == pafs.FileType.File]


def checkpoint_state(path: str) -> dict | None:
    """One checkpoint folder of the bucket, read; None where Ray pruned it meanwhile (num_to_keep)."""
    import tempfile

    import pyarrow.fs as pafs

    from mvimpute import storage
    from mvimpute.checkpoint import CHECKPOINT_FILE, read_checkpoint

    fs, _ = storage.filesystem(f"s3://{BUCKET}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            pafs.copy_files(f"{path}/{CHECKPOINT_FILE}", f"{tmp}/{CHECKPOINT_FILE}", source_filesystem=fs)
        except OSError:
            return None
        return read_checkpoint(tmp, "cpu")


def job_config(spec: Path, run_name: str, epochs: int, **cluster) -> dict:
    return {
        "data": str(spec),
        "model": "jpvae",
        "model_params": {"latent_dim": 4, "hidden": [32]},
        "train": {"epochs": epochs, "batch_size": 64, "patience": None},
        "cluster": {
            "num_workers": 2,
            "resources_per_worker": {"CPU": 1, "trainer": 1},
            "storage_path": f"s3://{BUCKET}/runs",
            "max_failures": 3,
            **cluster,
        },
        "mlflow": {"experiment": "cluster", "registered_model_name": f"cluster-{run_name}", "n_draws": 5},
        "run_name": run_name,
    }


def train_losing_a_node(cluster, victim, config: dict, replace: bool) -> dict:
    """`config` trained in a thread; after its first whole checkpoint in the bucket, `victim` removed
    (and a fresh trainer node added where `replace`) from this, the main thread (Ray's signal
    handlers). What the run did, read back from its checkpoints and MLflow."""
    from mvimpute import tracking
    from mvimpute.checkpoint import read_checkpoint
    from mvimpute.jobs.train import train_main

    run_dir = f"{config['cluster']['storage_path']}/{config['run_name']}"
    done: dict = {}

    def train() -> None:
        try:
            done["out"] = train_main(config, echo=False)
        except BaseException as err:  # noqa: BLE001  (raised below, in the main thread)
            done["error"] = err

    runner = threading.Thread(target=train, daemon=True)
    t0 = time.monotonic()
    runner.start()
    while not whole_checkpoints(run_dir) and runner.is_alive():
        time.sleep(0.2)
    before = [checkpoint_state(p) for p in whole_checkpoints(run_dir)]
    events = {"lost": victim.node_id, "lost_after_s": round(time.monotonic() - t0, 1)}
    cluster.remove_node(victim)
    if replace:
        events["added"] = cluster.add_node(num_cpus=1, resources={"trainer": 1}).node_id
    runner.join()
    if "error" in done:
        raise done["error"]
    out = done["out"]
    state = read_checkpoint(out.checkpoint_path)
    client = tracking.RunRef(tracking.resolve_tracking_uri(), out.run_id, "").client
    return {
        "events": events,
        "wall_s": round(time.monotonic() - t0, 1),
        "first_nodes": next((s["distributed"]["nodes"] for s in before if s), None),
        "epochs": [h["epoch"] for h in state["history"]],
        "attempts": state["attempts"],
        "final_workers": state["distributed"]["num_workers"],
        "final_nodes": state["distributed"]["nodes"],
        "mlflow_status": client.get_run(out.run_id).info.status,
        "mlflow_steps": [m.step for m in client.get_metric_history(out.run_id, "train_loss")],
        "model_uri": out.model_uri,
        "storage_path": out.result.storage_path,
    }


def train(workdir: Path) -> dict:
    """Two train workers on two nodes read an s3:// spec and checkpoint to the bucket.
    `replaced`: after the first checkpoint one worker's node is removed and a fresh one added; the run
    goes on from its last checkpoint on two workers again.
    `shrunk`: the same run elastic (`cluster.min_workers=1`), a node removed and none added; it goes on
    with the one worker left."""
    spec = s3_spec(workdir)
    with local_cluster(2) as (cluster, trainers):
        out = {"trainer_nodes": [n.node_id for n in trainers]}
        out["replaced"] = train_losing_a_node(cluster, trainers[1], job_config(spec, "replaced", 5), replace=True)
        left = [n for n in cluster.worker_nodes if n.node_id != out["replaced"]["events"]["lost"]]
        config = job_config(spec, "shrunk", 5, min_workers=1)
        out["shrunk"] = train_losing_a_node(cluster, left[0], config, replace=False)
    return out


def mlflow_trials(tracking_uri: str, experiment: str) -> list[dict]:
    """The sweep's trial runs in MLflow: trial id and status of each."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`mvimpute.trial_id` != ''")
    return [{"trial": r.data.tags["mvimpute.trial_id"], "status": r.info.status} for r in runs]


def trial_checkpoints(sweep_uri: str, trial_id: str) -> list[str]:
    """The checkpoint folders a trial has written: in Tune's trial folder (`<sweep>/<…trial id…>/`, a
    trial trained in its own process) or its Ray Train run's (`<sweep>-trials/<trial id>/`)."""
    import pyarrow.fs as pafs

    from mvimpute import storage

    found = []
    for parent in (sweep_uri, f"{sweep_uri}-trials"):
        fs, inner = storage.filesystem(parent)
        for d in fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True)):
            if d.type == pafs.FileType.Directory and trial_id in d.base_name:
                inside = fs.get_file_info(pafs.FileSelector(d.path))
                found += [f"{d.base_name}/{i.base_name}" for i in inside if i.base_name.startswith("checkpoint_")]
    return sorted(found)


def stored_trial_states(uri: str) -> dict[str, str]:
    """The trial statuses in the newest search state Tune has stored under `uri` (its sweep folder)."""
    import pyarrow.fs as pafs

    from mvimpute import storage

    fs, inner = storage.filesystem(uri)
    found = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    states = sorted(i.path for i in found if i.base_name.startswith("experiment_state-") and i.path.endswith(".json"))
    if not states:
        return {}
    with fs.open_input_stream(states[-1]) as f:
        runner = json.loads(f.read())
    trials = [json.loads(entry[0]) for entry in runner.get("trial_data", [])]
    return {t["trial_id"]: t["status"] for t in trials}


def sweep(workdir: Path) -> dict:
    """A sweep's driver (`mvimpute tune`, a process of its own, attached to the cluster) killed once
    two trials have finished (whether the search state in the bucket records them yet or not); a new
    driver in a fresh working folder continues it with `--resume --name`. The sweep's state and
    trials live in the bucket."""
    spec = s3_spec(workdir, rows=600)
    exe = str(Path(sys.executable).parent / "mvimpute")
    args = [
        "--data", str(spec), "--model", "jpvae", "--epochs", "3", "--num-samples", "4", "--name", "survivor",
        "--scheduler", "fifo", "--search", "random",
        f"cluster.storage_path=s3://{BUCKET}/sweeps", "mlflow.experiment=sweep", "train.patience=null",
        "model_params.latent_dim=4", "model_params.hidden=[32]",
    ]  # fmt: skip
    uri = os.environ["MLFLOW_TRACKING_URI"]
    with local_cluster(2) as (cluster, _):
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        first_dir, second_dir = workdir / "driver-1", workdir / "driver-2"
        first_dir.mkdir()
        second_dir.mkdir()
        driver = subprocess.Popen([exe, "tune", *args], cwd=first_dir, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 600
        stored: dict = {}
        while time.monotonic() < deadline and driver.poll() is None:
            # two trials finished; whether the search state in the bucket records them yet is left to timing
            if sum(t["status"] == "FINISHED" for t in mlflow_trials(uri, "sweep")) >= 2:
                break
            time.sleep(0.5)
        if driver.poll() is not None:
            raise RuntimeError(f"the first driver ended before it was killed: {driver.stdout.read().decode()[-3000:]}")
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and anything it started, at once
        driver.wait()
        before = mlflow_trials(uri, "sweep")
        stored = stored_trial_states(f"s3://{BUCKET}/sweeps/survivor")
        trials = f"s3://{BUCKET}/sweeps/survivor"
        saved_before = {t["trial"]: trial_checkpoints(trials, t["trial"]) for t in before}
        second = subprocess.run([exe, "tune", "--resume", *args], cwd=second_dir, env=env, capture_output=True,
                                text=True, timeout=900)  # fmt: skip
        (second_dir / "driver.log").write_text(f"{second.stdout}\n--- stderr ---\n{second.stderr}")
        if second.returncode != 0:
            raise RuntimeError(f"the resumed sweep failed: {second.stdout[-3000:]} {second.stderr[-5000:]}")
        after = mlflow_trials(uri, "sweep")
        saved_after = {t: trial_checkpoints(trials, t) for t in saved_before}
    from mvimpute import storage

    table = pd.read_csv(storage.filesystem(f"s3://{BUCKET}/sweeps/survivor/results.csv")[0].open_input_stream(
        f"{BUCKET}/sweeps/survivor/results.csv"))  # fmt: skip
    return {
        "before": before,
        "stored_at_kill": stored,
        "after": after,
        "checkpoints_at_kill": saved_before,
        "checkpoints_after": saved_after,
        "table": table[["trial_id", "completed", "score"]].to_dict(orient="records"),
        "second_stdout": second.stdout[-2000:],
        "local_state": sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*.sweep.json")),
    }


def _imputer_actors() -> list[dict]:
    """Live Ray Data map actors (`ImputeBatch` runs inside them) and their nodes, from the cluster's own
    actor table (no dashboard)."""
    from ray._private import state

    return [
        {"node": a["Address"]["NodeID"], "state": a["State"]}
        for a in state.actors().values()
        if "MapWorker" in a.get("ActorClassName", "") and a["State"] == "ALIVE"
    ]


def batch(workdir: Path) -> dict:
    """A wide table in the bucket imputed into the bucket by two actors on two nodes, compared with the
    in-process result; then again with the node of one actor removed while the job runs."""
    import pyarrow.fs as pafs

    import mvimpute as mvi
    from mvimpute import storage
    from mvimpute.jobs.batch import SUCCESS, impute_table

    data = mvi.load_dataset("digits-halves")
    imp = mvi.MultiViewImputer("jpvae", latent_dim=4, hidden=[32], epochs=2, seed=0).fit(data)
    ckpt = workdir / "model.pt"
    imp.save(ckpt)
    wide = data.to_frame().reset_index(drop=True)
    rng = np.random.default_rng(0)
    big = pd.concat([wide] * 6, ignore_index=True)  # ~10,800 rows: enough batches to lose a node among them
    top = [c for c in big.columns if c.startswith("top:")]
    big.loc[rng.random(len(big)) < 0.5, top] = np.nan
    big.insert(0, "sample_id", [f"s{i}" for i in range(len(big))])
    create_bucket(BUCKET)
    fs, _ = storage.filesystem(f"s3://{BUCKET}")
    pq.write_table(pa.Table.from_pandas(big, preserve_index=False), f"{BUCKET}/wide/in.parquet", filesystem=fs)
    src = f"s3://{BUCKET}/wide/in.parquet"
    opts = {"checkpoint": ckpt, "id_column": "sample_id", "batch_size": 400}
    impute_table(src, workdir / "local.parquet", engine="local", **opts)
    expected = pd.read_parquet(workdir / "local.parquet")

    def read_back(uri: str) -> pd.DataFrame | None:
        if not storage.exists(storage.join(uri, SUCCESS)):
            return None
        manifest = json.loads(storage.read_text(storage.join(uri, SUCCESS)))
        frames = [pd.read_parquet(fs.open_input_file(f"{uri[5:]}/{p['file']}")) for p in manifest["parts"]]
        return pd.concat(frames, ignore_index=True)

    def visible(uri: str) -> list[str]:
        found = fs.get_file_info(pafs.FileSelector(uri[5:], recursive=True, allow_not_found=True))
        return sorted(i.path for i in found if i.type == pafs.FileType.File and "/_temporary/" not in i.path)

    def same(got: pd.DataFrame | None) -> dict:
        if got is None:
            return {"complete": False}
        got = got.drop(columns=["__row__"])
        return {
            "complete": True,
            "rows": len(got),
            "ids_in_order": bool((got["sample_id"].to_numpy() == expected["sample_id"].to_numpy()).all()),
            # the same model on other batches: equal up to float rounding (observed entries: bit for bit, below)
            "equal": bool(got.columns.tolist() == expected.columns.tolist()
                          and np.allclose(got.drop(columns="sample_id").to_numpy(np.float64),
                                          expected.drop(columns="sample_id").to_numpy(np.float64),
                                          rtol=1e-6, atol=1e-6)),
            "observed_kept": bool(np.array_equal(got[top].to_numpy()[~np.isnan(big[top].to_numpy())],
                                                 big[top].to_numpy()[~np.isnan(big[top].to_numpy())])),
        }  # fmt: skip

    out: dict = {"rows": len(big)}
    with local_cluster(3) as (cluster, nodes):
        done = impute_table(src, f"s3://{BUCKET}/out/two", num_workers=2, **opts)
        out["two"] = {**same(read_back(f"s3://{BUCKET}/out/two")), "parts_by_node": done.parts_by_node}

        result: dict = {}

        def job() -> None:
            try:  # smaller batches: more of them left when the node goes
                small = {**opts, "batch_size": 150}
                result["done"] = impute_table(src, f"s3://{BUCKET}/out/lost", num_workers=2, **small)
            except BaseException as err:  # noqa: BLE001  (reported)
                result["error"] = f"{type(err).__name__}: {err}"

        runner = threading.Thread(target=job, daemon=True)
        runner.start()
        deadline = time.monotonic() + 300
        staged: list = []
        while time.monotonic() < deadline and runner.is_alive():
            selector = pafs.FileSelector(f"{BUCKET}/out/lost/_temporary", recursive=True, allow_not_found=True)
            staged = [p for p in fs.get_file_info(selector) if p.path.endswith(".parquet")]
            if staged and len(_imputer_actors()) >= 2:
                break
            time.sleep(0.1)
        actor_nodes = {a["node"] for a in _imputer_actors()}
        victim = next((n for n in nodes if n.node_id in actor_nodes), None)
        out["lost"] = {"staged_before": len(staged), "actor_nodes": sorted(actor_nodes)}
        if victim is not None and runner.is_alive():
            cluster.remove_node(victim)
            out["lost"]["removed"] = victim.node_id
        runner.join(timeout=600)
        out["lost"]["hung"] = runner.is_alive()
        out["lost"]["error"] = result.get("error")
        out["lost"].update(same(read_back(f"s3://{BUCKET}/out/lost")))
        out["lost"]["visible"] = visible(f"s3://{BUCKET}/out/lost")
        if "done" in result:
            out["lost"]["parts_by_node"] = result["done"].parts_by_node
    return out


def endpoint(workdir: Path) -> dict:
    """Two replicas of the endpoint on two nodes (the head holds no CPU: Serve's controller and proxy
    only) under a steady loopback load of 4 clients; one replica's node removed, then a fresh node
    added. Every request's outcome is counted, with and without one client retry (after 0.5 s) on a
    connection error or a 5xx; then the app's status and /healthz."""
    import urllib.error
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    import mvimpute as mvi
    from mvimpute.endpoint import build_app

    data = mvi.load_dataset("digits-halves")
    imp = mvi.MultiViewImputer("jpvae", latent_dim=4, hidden=[32], epochs=2, seed=0).fit(data)
    ckpt = workdir / "model.pt"
    imp.save(ckpt)
    body = json.dumps({"instances": [{"top": [float(x) for x in data.views["top"][0]], "bottom": None}]}).encode()
    port = int(os.environ.get("MVIMPUTE_TEST_PORT", "0")) or free_port()
    url = f"http://127.0.0.1:{port}"

    def call(path: str = "/impute") -> int:
        req = urllib.request.Request(url + path, data=body if path == "/impute" else None,
                                     headers={"content-type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return -1  # no connection / reset

    with local_cluster(2, head_cpus=0) as (cluster, nodes):
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app({"checkpoint": str(ckpt), "device": "cpu", "min_replicas": 2, "max_replicas": 2})
        serve.run(app, name="mvimpute", route_prefix="/")
        stop = threading.Event()
        outcomes: list[tuple[float, int, int]] = []  # (time, first status, status after one retry)
        t0 = time.monotonic()

        def client() -> None:
            while not stop.is_set():
                first = call()
                if first == -1 or first >= 500:  # one retry, after a short pause
                    time.sleep(0.5)
                    again = call()
                else:
                    again = first
                outcomes.append((time.monotonic() - t0, first, again))

        with ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(client)
            time.sleep(5)
            removed_at = time.monotonic() - t0
            cluster.remove_node(nodes[1])
            time.sleep(15)
            added = cluster.add_node(num_cpus=1, resources={"trainer": 1})
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                status = serve.status().applications["mvimpute"]
                running = [r for r in status.deployments.values()][0].replica_states.get("RUNNING", 0)
                if status.status == "RUNNING" and running == 2:
                    break
                time.sleep(1)
            time.sleep(3)
            stop.set()
        status = serve.status().applications["mvimpute"]
        healthz = call("/healthz")
        serve.shutdown()
    during = [o for o in outcomes if o[0] >= removed_at]
    return {
        "requests": len(outcomes),
        "requests_after_loss": len(during),
        "failed_first_try": sum(o[1] != 200 for o in outcomes),
        "failed_after_retry": sum(o[2] != 200 for o in outcomes),
        "statuses": sorted({o[1] for o in outcomes}),
        "failures": [(round(t - removed_at, 2), a, b) for t, a, b in outcomes if a != 200],
        "app_status": getattr(status.status, "value", str(status.status)),
        "replicas_running": [d.replica_states.get("RUNNING", 0) for d in status.deployments.values()],
        "healthz": healthz,
        "added": added.node_id,
        "removed_at_s": round(removed_at, 1),
    }


SCENARIOS = {"train": train, "sweep": sweep, "batch": batch, "endpoint": endpoint}

if __name__ == "__main__":
    name, workdir = sys.argv[1], Path(sys.argv[2])
    print(json.dumps(SCENARIOS[name](workdir)), flush=True)
