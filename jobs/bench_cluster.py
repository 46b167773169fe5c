"""Benchmarks on a local multi-node Ray cluster with an S3 bucket (jobs/local_cluster.py), run through
`jobs/bench.py`:

    python jobs/bench.py cluster-train --rows 20000 --epochs 4 --repeats 3
    python jobs/bench.py cluster-batch --rows 100000 --repeats 3
    python jobs/bench.py batch-driver-memory --sizes 100000 1000000

`cluster-train`: a training run from an s3:// spec with checkpoints in the bucket, 1 worker against 2
workers on 2 nodes (alternated), epoch throughput from when each epoch's checkpoint appears in the
bucket; then, per repeat, one run that loses a worker's node after its second epoch: the seconds
from the loss to the next epoch's checkpoint (the restart, the restore and one epoch) beside the
epoch's own time.
`cluster-batch`: `impute_table` from the bucket into the bucket, in-process (`engine="local"`), one
actor and two actors on two nodes, alternated; rows/s.
`batch-driver-memory`: the driver's own peak RSS (sampled every 0.1 s) for a bucket-to-bucket job
on two actors as the rows grow, each job driven by a fresh process (its input written by another):
the actors write their parts, so the driver should not grow.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from bench_serving import _write  # beside this file
from local_cluster import create_bucket, local_cluster, s3_server

BUCKET = "mvimpute-bench"


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def _omics_spec(root: Path, rows: int) -> Path:
    """synthetic-omics (`rows` samples) as one Parquet table per view in the bucket, and its spec."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    import mvimpute as mvi
    from mvimpute import storage

    create_bucket(BUCKET)
    data = mvi.load_dataset("synthetic-omics", n_samples=rows)
    views = {}
    for v in data.view_names:
        frame = pd.DataFrame(data.views[v], columns=data.columns[v])
        frame.insert(0, "sample_id", np.asarray(data.index).astype(str))
        uri = f"s3://{BUCKET}/omics-{rows}/{v}.parquet"
        fs, inner = storage.filesystem(uri)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), inner, filesystem=fs)
        views[v] = {"path": uri}
    spec = root / f"omics-{rows}.yaml"
    spec.write_text(yaml.safe_dump({"id_column": "sample_id", "views": views}, sort_keys=False))
    return spec


class CheckpointClock:
    """When each of a run's checkpoints first appears in the bucket (polled every 0.1 s)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir, self.seen, self._stop = run_dir, {}, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import pyarrow.fs as pafs

        from mvimpute import storage

        fs, inner = storage.filesystem(self.run_dir)
        while not self._stop.is_set():
            try:
                found = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
            except OSError:
                found = []
            now = time.monotonic()
            for i in found:
                if i.base_name.startswith("checkpoint_") and i.base_name not in self.seen:
                    self.seen[i.base_name] = now
            time.sleep(0.1)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return sorted(self.seen.values())


def _config(spec: Path, name: str, workers: int, epochs: int) -> dict:
    return {
        "data": str(spec),
        "model": "jpvae",
        "train": {"epochs": epochs, "batch_size": 256, "patience": None, "calibrate": False},
        "cluster": {
            "num_workers": workers,
            "resources_per_worker": {"CPU": 1, "trainer": 1},
            "storage_path": f"s3://{BUCKET}/runs",
            "max_failures": 3,
        },
        "mlflow": {"enabled": False},
        "run_name": name,
    }


def cluster_train(rows: int = 20_000, epochs: int = 4, repeats: int = 3, out: str = "outputs/bench") -> dict:
    from mvimpute.jobs.train import train_main

    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    runs: dict[str, list[float]] = {"1 worker": [], "2 workers on 2 nodes": []}
    recovery: list[dict] = []
    with s3_server(root), local_cluster(trainer_nodes=2) as (cluster, nodes):
        spec = _omics_spec(root, rows)
        for r in range(repeats):
            for workers, key in ((1, "1 worker"), (2, "2 workers on 2 nodes")):
                name = f"w{workers}-{r}"
                clock = CheckpointClock(f"s3://{BUCKET}/runs/{name}")
                train_main(_config(spec, name, workers, epochs), echo=False)
                times = clock.stop()
                epoch_s = statistics.median(np.diff(times[: epochs]).tolist()) if len(times) > 2 else float("nan")
                runs[key].append(epoch_s)
                print(f"{key}: {epoch_s:.2f} s/epoch", flush=True)
            # a node lost after the second epoch, a fresh one added at once
            name = f"lose-{r}"
            clock = CheckpointClock(f"s3://{BUCKET}/runs/{name}")
            thread = threading.Thread(
                target=train_main, args=(_config(spec, name, 2, epochs + 2),), kwargs={"echo": False}, daemon=True
            )
            thread.start()
            while len(clock.seen) < 2 and thread.is_alive():
                time.sleep(0.05)
            lost_at = time.monotonic()
            victim = next(n for n in nodes if n in cluster.worker_nodes)
            cluster.remove_node(victim)
            nodes = [n for n in nodes if n is not victim] + [cluster.add_node(num_cpus=1, resources={"trainer": 1})]
            thread.join()
            times = clock.stop()
            after = [t for t in times if t > lost_at]
            before = [t for t in times if t <= lost_at]
            recovery.append({
                "to_next_checkpoint_s": after[0] - lost_at if after else float("nan"),
                "epoch_s": statistics.median(np.diff(after).tolist()) if len(after) > 2 else float("nan"),
                "epochs_before_loss": len(before),
            })  # fmt: skip
            print(f"lost a node: next checkpoint {recovery[-1]['to_next_checkpoint_s']:.1f} s later", flush=True)
    one, two = runs["1 worker"], runs["2 workers on 2 nodes"]
    speedup = [a / b for a, b in zip(one, two, strict=True)]
    to_next = [x["to_next_checkpoint_s"] for x in recovery]
    epoch_after = [x["epoch_s"] for x in recovery]
    result = {
        "bench": "cluster-train", "rows": rows, "epochs": epochs, "repeats": repeats,
        "seconds_per_epoch": {k: _spread(v) for k, v in runs.items()},
        "speedup_two_over_one": _spread(speedup),
        "node_loss": {"to_next_checkpoint_s": _spread(to_next), "epoch_s_after": _spread(epoch_after),
                      "runs": recovery},
        "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    s = result["seconds_per_epoch"]
    table = (
        "| run | s/epoch median (min–max) |\n|---|---|\n"
        + "\n".join(f"| {k} | {v['median']:.2f} ({v['min']:.2f}–{v['max']:.2f}) |" for k, v in s.items())
        + f"\n| speed-up, 2 workers / 1 | {statistics.median(speedup):.2f} ({min(speedup):.2f}–{max(speedup):.2f}) |"
        + f"\n| node lost → next epoch's checkpoint, s | {statistics.median(to_next):.1f} "
        f"({min(to_next):.1f}–{max(to_next):.1f}) |"
        + f"\n| an epoch after the restart, s | {statistics.median(epoch_after):.2f} "
        f"({min(epoch_after):.2f}–{max(epoch_after):.2f}) |"
    )
    _write(out, "cluster_train", result, table)
    return result


def _wide_table(rows: int, fs, key: str) -> None:
    """digits-halves repeated to `rows` rows, a fifth of the entries and 40 % of the views hidden,
    written to the bucket as Parquet (row groups of 8,192)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import mvimpute as mvi

    data = mvi.load_dataset("digits-halves")
    big = data.subset(np.resize(np.arange(data.n_samples), rows))
    wide = mvi.masking.corrupt(big, view_rate=0.4, mcar_rate=0.2, seed=1).data.to_frame().reset_index(drop=True)
    wide.insert(0, "sample_id", np.arange(rows))
    pq.write_table(pa.Table.from_pandas(wide, preserve_index=False), f"{BUCKET}/{key}", filesystem=fs,
                   row_group_size=8192)  # fmt: skip


def _checkpoint(root: Path) -> Path:
    from bench_serving import train_small  # beside this file

    return train_small(root / "model.pt")


def cluster_batch(rows: int = 100_000, repeats: int = 3, batch_size: int = 4096, out: str = "outputs/bench") -> dict:
    from mvimpute import storage
    from mvimpute.jobs.batch import impute_table

    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-batch-"))
    ckpt = _checkpoint(root)
    runs: dict[str, list[float]] = {"in-process (engine local)": [], "1 actor": [], "2 actors on 2 nodes": []}
    with s3_server(root), local_cluster(trainer_nodes=2) as _:
        create_bucket(BUCKET)
        fs, _ = storage.filesystem(f"s3://{BUCKET}")
        _wide_table(rows, fs, "in/table.parquet")
        src = f"s3://{BUCKET}/in/table.parquet"
        for r in range(repeats):
            for key, engine, workers in (("in-process (engine local)", "local", 1), ("1 actor", "ray", 1),
                                         ("2 actors on 2 nodes", "ray", 2)):  # fmt: skip
                dest = f"s3://{BUCKET}/out/{engine}-{workers}-{r}"
                done = impute_table(src, dest, checkpoint=ckpt, id_column="sample_id", engine=engine,
                                    num_workers=workers, batch_size=batch_size)  # fmt: skip
                runs[key].append(rows / done.seconds)
                print(f"{key}: {rows / done.seconds:.0f} rows/s, parts by node {done.parts_by_node}", flush=True)
    base = runs["in-process (engine local)"]
    ratios = {k: [a / b for a, b in zip(v, base, strict=True)] for k, v in runs.items() if v is not base}
    result = {
        "bench": "cluster-batch", "rows": rows, "repeats": repeats, "batch_size": batch_size,
        "rows_per_s": {k: _spread(v) for k, v in runs.items()},
        "ratio_over_local": {k: _spread(v) for k, v in ratios.items()},
        "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    rp = result["rows_per_s"]
    table = "| engine | rows/s median (min–max) | ÷ in-process, median (min–max) |\n|---|---|---|\n" + "\n".join(
        f"| {k} | {v['median']:.0f} ({v['min']:.0f}–{v['max']:.0f}) | "
        + (f"{statistics.median(ratios[k]):.2f} ({min(ratios[k]):.2f}–{max(ratios[k]):.2f})" if k in ratios else "1")
        + " |"
        for k, v in rp.items()
    )
    _write(out, "cluster_batch", result, table)
    return result


def _in_child(call: str, env: dict, sample: bool = False) -> tuple[str, float]:
    """`call` (Python, with this folder on the path) in a fresh process; (its output, its peak RSS in
    MiB sampled every 0.1 s from here, or 0 without `sample`)."""
    import subprocess
    import sys

    import psutil

    code = f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); {call}"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    peak = [0.0]
    stop = threading.Event()

    def watch() -> None:
        me = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], me.memory_info().rss / 2**20)
            except psutil.Error:
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    if sample:
        watcher.start()
    out, _ = proc.communicate()
    stop.set()
    if sample:
        watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{call} failed ({proc.returncode}):\n{out[-4000:]}")
    return out, peak[0]


def _write_input(rows: int) -> None:
    """The job's input, written by a process of its own (the driver never holds it)."""
    from mvimpute import storage

    _wide_table(rows, storage.filesystem(f"s3://{BUCKET}")[0], f"in/{rows}.parquet")


def _drive(rows: int, ckpt: str, batch_size: int) -> None:
    """One bucket-to-bucket job on two actors, driven from this fresh process (attached to the cluster)."""
    import json

    from mvimpute.jobs.batch import impute_table

    done = impute_table(f"s3://{BUCKET}/in/{rows}.parquet", f"s3://{BUCKET}/out/{rows}", checkpoint=ckpt,
                        id_column="sample_id", num_workers=2, batch_size=batch_size)  # fmt: skip
    print("RESULT " + json.dumps({"rows": done.rows, "seconds": done.seconds, "parts_by_node": done.parts_by_node}))


def batch_driver_memory(sizes=(100_000, 1_000_000), batch_size: int = 4096, out: str = "outputs/bench") -> dict:
    """The driver's peak RSS for bucket-to-bucket jobs of growing size, two actors on two nodes: each
    job driven by a fresh process attached to the cluster, its input written by another one, so the
    peaks compare the job's driver alone."""
    import json
    import os

    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-driver-memory-"))
    ckpt = _checkpoint(root)
    found: list[dict] = []
    with s3_server(root), local_cluster(trainer_nodes=2, connect=False) as (cluster, _):
        create_bucket(BUCKET)
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        for rows in sizes:
            _in_child(f"from bench_cluster import _write_input; _write_input({rows})", env)
            text, peak = _in_child(f"from bench_cluster import _drive; _drive({rows}, {str(ckpt)!r}, {batch_size})",
                                   env, sample=True)  # fmt: skip
            line = [ln for ln in text.splitlines() if ln.startswith("RESULT ")][-1]
            found.append({**json.loads(line[len("RESULT "):]), "driver_peak_rss_mib": peak})
            print(found[-1], flush=True)
    growth = found[-1]["driver_peak_rss_mib"] / found[0]["driver_peak_rss_mib"]
    result = {"bench": "batch-driver-memory", "runs": found, "growth": growth, "wall_s": time.perf_counter() - t0}
    table = "| rows | driver peak RSS, MiB | s |\n|---|---|---|\n" + "\n".join(
        f"| {r['rows']:,} | {r['driver_peak_rss_mib']:.0f} | {r['seconds']:.0f} |" for r in found
    ) + f"\n\ndriver peak, largest ÷ smallest: {growth:.2f}×"
    _write(out, "batch_driver_memory", result, table)
    return result


def auto_cost(epochs: int = 100, repeats: int = 3, data: str = "digits-halves", out: str = "outputs/bench") -> dict:
    """`model="auto"`'s cost three ways, alternated `repeats` times on the same data and settings: each
    default candidate fitted alone in-process (their sum), `MultiViewImputer("auto")` in-process, and
    `tune --model auto` (`num_samples=1`, no MLflow) on a local cluster of a head and two 1-CPU nodes,
    where two trials run at once. In-process fits use one torch thread, as each trial's process does
    (Ray sets OMP_NUM_THREADS to its 1 CPU). Fixed epochs (no early stopping), so JPVAE's trial does the
    same number of steps whatever learning rate its space samples, and JPVAE's model parameters pinned to
    its defaults (a candidate's own parameters are fixed over its space), so that every route fits the
    same models. Wall seconds; the sweep's from `tune_main`'s call (the cluster already up) to its
    return, the champion's checkpoint written."""
    import os

    import torch

    import mvimpute as mvi
    from mvimpute.auto import DEFAULT_CANDIDATES
    from mvimpute.jobs.tune import tune_main
    from mvimpute.models.jpvae import JPVAEConfig

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    dataset = mvi.load_dataset(data)
    jp = JPVAEConfig()
    pinned = {"alpha": jp.alpha, "prior": "orthogonal" if len(dataset.view_names) == 2 else "cholesky",
              "latent_dim": jp.latent_dim, "kl_cycles": jp.kl_cycles}  # fmt: skip
    candidates = {**DEFAULT_CANDIDATES, "jpvae": {**DEFAULT_CANDIDATES["jpvae"], **pinned}}
    train = {"epochs": epochs, "patience": None, "seed": 0}
    root = Path(tempfile.mkdtemp(prefix="bench-auto-"))
    runs: dict[str, list] = {"sum of candidates": [], "auto in-process": [], "tune on two workers": []}
    per_candidate: dict[str, list[float]] = {m: [] for m in candidates}
    picks: dict[str, list[str]] = {"auto in-process": [], "tune on two workers": []}
    trial_seconds: dict[str, list[float]] = {}  # each candidate's trial, Tune's time_total_s
    loads: list[float] = []
    with local_cluster(trainer_nodes=2):
        for r in range(repeats):
            loads.append(os.getloadavg()[0])
            order = ["candidates", "auto", "tune"]
            order = order[r % 3 :] + order[: r % 3]  # the first place rotates
            for what in order:
                if what == "candidates":
                    total = 0.0
                    for name, params in candidates.items():
                        s = time.perf_counter()
                        mvi.MultiViewImputer(name, **params, **train, progress=False).fit(dataset)
                        per_candidate[name].append(time.perf_counter() - s)
                        total += per_candidate[name][-1]
                    runs["sum of candidates"].append(total)
                elif what == "auto":
                    s = time.perf_counter()
                    imp = mvi.MultiViewImputer("auto", candidates=candidates, **train, progress=False).fit(dataset)
                    runs["auto in-process"].append(time.perf_counter() - s)
                    picks["auto in-process"].append(imp.model_name)
                else:
                    s = time.perf_counter()
                    res = tune_main(
                        {
                            "data": data,
                            "model": "auto",
                            "model_params": {"candidates": candidates},
                            "train": train,
                            "cluster": {"storage_path": str(root / "ray")},
                            "mlflow": {"enabled": False},
                            "tune": {"num_samples": 1, "scheduler": "fifo", "name": f"auto-cost-{r}"},
                        },
                        echo=False,
                    )
                    runs["tune on two workers"].append(time.perf_counter() - s)
                    champion = res.table[res.table["champion"]]
                    won = str(champion["candidate.model"].iloc[0]) if len(champion) else ""
                    picks["tune on two workers"].append(won)
                    times = res.result_grid.get_dataframe()[["trial_id", "time_total_s"]]
                    models = dict(zip(res.table["trial_id"], res.table["candidate.model"], strict=True))
                    for tid, sec in zip(times["trial_id"], times["time_total_s"], strict=True):
                        trial_seconds.setdefault(models[tid], []).append(float(sec))
                print(f"repeat {r}: {what} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    base = runs["sum of candidates"]
    ratios = {k: [a / b for a, b in zip(v, base, strict=True)] for k, v in runs.items() if k != "sum of candidates"}
    result = {
        "bench": "auto-cost", "data": data, "epochs": epochs, "repeats": repeats,
        "seconds": {k: _spread(v) for k, v in runs.items()},
        "candidate_seconds": {k: _spread(v) for k, v in per_candidate.items()},
        "trial_seconds": {k: _spread(v) for k, v in trial_seconds.items()},
        "over_sum": {k: _spread(v) for k, v in ratios.items()},
        "candidates": candidates, "picks": picks, "load_average_1m": loads, "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    s = result["seconds"]
    table = (
        "| run | wall s, median (min–max) | ÷ sum of candidates, median (min–max) |\n|---|---|---|\n"
        + "\n".join(
            f"| {k} | {v['median']:.1f} ({v['min']:.1f}–{v['max']:.1f}) | "
            + ("1" if k == "sum of candidates" else
               f"{statistics.median(ratios[k]):.2f} ({min(ratios[k]):.2f}–{max(ratios[k]):.2f})")
            + " |"
            for k, v in s.items()
        )
        + "\n\n| candidate | alone in-process, wall s | its trial in the sweep, s |\n|---|---|---|\n"
        + "\n".join(
            f"| {k} | {v['median']:.1f} ({v['min']:.1f}–{v['max']:.1f}) | "
            + (lambda t: f"{t['median']:.1f} ({t['min']:.1f}–{t['max']:.1f})" if t else "–")(
                result["trial_seconds"].get(k)
            )
            + " |"
            for k, v in result["candidate_seconds"].items()
        )
    )  # fmt: skip
    _write(out, "auto_cost", result, table)
    return result
