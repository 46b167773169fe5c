"""Serving and batch-imputation benchmarks (`python jobs/bench.py serve-latency | serve-load | batch-throughput`).

Loopback only (127.0.0.1), bounded request counts; compared runs alternate, repeated, median and spread.
Not part of the library (it would ship inside every logged model).
"""

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_small(path: Path, epochs: int = 5, seed: int = 0) -> Path:
    """The demo's JPVAE (jobs/train.yaml sizes) trained in-process on digits-halves, for a realistic forward cost."""
    import mvimpute as mvi

    data = mvi.load_dataset("digits-halves")
    imp = mvi.MultiViewImputer(
        "jpvae", prior="orthogonal", latent_dim=10, hidden=[128, 128], epochs=epochs, seed=seed, device="cpu"
    )
    return imp.fit(data).save(path)


def _instances(n: int, seed: int = 0) -> list[dict]:
    import mvimpute as mvi

    data = mvi.load_dataset("digits-halves")
    rows = np.random.default_rng(seed).integers(0, data.n_samples, n)
    return [{"top": data.views["top"][i].tolist(), "bottom": None} for i in rows]


def _body(kind: str, n_instances: int = 1) -> dict:
    body = {"instances": _instances(n_instances)}
    if kind == "draws":
        body.update({"n_samples": 100, "return": ["mean", "std", "interval"]})
    return body


async def _load(url: str, body: dict, concurrency: int, n_requests: int) -> dict:
    """`n_requests` POSTs from `concurrency` concurrent clients; latencies (s), wall time, errors."""
    import httpx

    payload = json.dumps(body).encode()
    latencies: list[float] = []
    errors = 0
    todo = iter(range(n_requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker():
            nonlocal errors
            for _ in todo:
                t0 = time.perf_counter()
                r = await client.post(url, content=payload, headers={"content-type": "application/json"})
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        await client.post(url, content=payload, headers={"content-type": "application/json"})  # warm the path
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {
        "requests": n_requests,
        "errors": errors,
        "req_per_s": n_requests / wall,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
    }


def _raw_forward(checkpoint: Path, kind: str, n_instances: int, n_calls: int) -> dict:
    """The predictor called in-process on one request's instances: the model's own limit."""
    from mvimpute.predictor import Predictor

    p = Predictor.from_checkpoint(checkpoint, device="cpu")
    body = _body(kind, n_instances)
    opts = {"outputs": tuple(body.get("return", ["mean"])), "n_samples": body.get("n_samples", 100)}
    data = p.check_instances(body["instances"])
    p.predict(data, **opts)
    lat = []
    t0 = time.perf_counter()
    for _ in range(n_calls):
        t = time.perf_counter()
        p.predict(data, **opts).to_instances()
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {"requests": n_calls, "errors": 0, "req_per_s": n_calls / wall,
            "p50_ms": float(np.median(lat) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3)}


def _noop_app():
    from fastapi import FastAPI, Request
    from ray import serve

    api = FastAPI()

    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
    @serve.ingress(api)
    class NoOp:
        @api.post("/impute")
        async def impute(self, request: Request):
            await request.body()
            return {"predictions": []}

    return NoOp.bind()


def _summary(cells: list[dict]) -> dict:
    out = {}
    for key in ("req_per_s", "p50_ms", "p99_ms"):
        vals = [c[key] for c in cells]
        out[key] = statistics.median(vals)
        out[key + "_min"], out[key + "_max"] = min(vals), max(vals)
    out["errors"] = sum(c["errors"] for c in cells)
    out["requests"] = sum(c["requests"] for c in cells)
    return out


def _serve_beside_noop(prefix: str, checkpoint: str | None):
    """Ray and Serve on a free loopback port with the no-op app at /noop; (temporary folder, checkpoint
    (trained there when none is given), base URL, the endpoint's common app arguments)."""
    import ray
    from ray import serve

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    ckpt = Path(checkpoint) if checkpoint else train_small(tmp / "model.pt")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = {"checkpoint": str(ckpt), "num_cpus": 0.5, "device": "cpu", "max_replicas": 1, "reload_interval_s": 0}
    serve.run(_noop_app(), name="noop", route_prefix="/noop")
    return tmp, ckpt, f"http://127.0.0.1:{port}", common


def serve_latency(
    concurrency=(1, 8, 32),
    repeats: int = 3,
    requests: int = 160,
    rows_requests: int = 12,
    out: str = "outputs/bench",
    checkpoint: str | None = None,
) -> dict:
    """req/s and p50/p99 of the endpoint with and without @serve.batch, point vs 100 draws, beside a
    no-op Serve deployment and the raw forward; 1,000-row requests for rows/s. Runs alternate."""
    import ray
    from ray import serve

    from mvimpute.endpoint import build_app

    tmp, ckpt, base, common = _serve_beside_noop("bench-serve-", checkpoint)
    serve.run(build_app({**common, "max_batch_size": 32, "name": "Batched"}), name="batched", route_prefix="/batched")
    serve.run(build_app({**common, "max_batch_size": 1, "name": "Unbatched"}), name="unbatched",
              route_prefix="/unbatched")
    targets = [("noop", "point"), ("batched", "point"), ("unbatched", "point"), ("batched", "draws"),
               ("unbatched", "draws")]
    cells: dict[str, list[dict]] = {}
    t_start = time.perf_counter()
    try:
        for rep in range(repeats):
            for c in concurrency:
                for target, kind in targets:
                    r = asyncio.run(_load(f"{base}/{target}/impute", _body(kind), c, requests))
                    cells.setdefault(f"{target}|{kind}|{c}", []).append(r)
                for kind in ("point", "draws"):
                    cells.setdefault(f"raw|{kind}|1", []).append(_raw_forward(ckpt, kind, 1, requests))
            # rows/s through 1,000-row requests (point imputation), beside the raw forward on 1,000 rows
            for target in ("batched", "unbatched"):
                r = asyncio.run(_load(f"{base}/{target}/impute", _body("point", 1000), 4, rows_requests))
                cells.setdefault(f"{target}|rows1000|4", []).append(r)
            cells.setdefault("raw|rows1000|1", []).append(_raw_forward(ckpt, "point", 1000, rows_requests))
            print(f"repeat {rep + 1}/{repeats} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    summary = {k: _summary(v) for k, v in cells.items()}
    result = {"bench": "serve-latency", "repeats": repeats, "requests_per_cell": requests,
              "wall_s": time.perf_counter() - t_start, "cells": summary, "runs": cells}
    _write(out, "serve_latency", result, _latency_table(summary))
    return result


def _latency_table(s: dict) -> str:
    lines = ["| path | request | concurrency | req/s (min–max) | p50 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|"]
    for key, v in s.items():
        target, kind, c = key.split("|")
        lines.append(
            f"| {target} | {kind} | {c} | {v['req_per_s']:.1f} ({v['req_per_s_min']:.1f}–{v['req_per_s_max']:.1f}) "
            f"| {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['errors']} |"
        )
    return "\n".join(lines)


def serve_load(users: int = 16, requests: int = 2000, run_time_s: int = 60, out: str = "outputs/bench",
               checkpoint: str | None = None, kind: str = "point") -> dict:
    """A bounded locust headless run (loopback, `requests` in all) against the batched endpoint: the error count."""
    import ray
    from ray import serve

    from mvimpute.endpoint import build_app

    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    ckpt = Path(checkpoint) if checkpoint else train_small(tmp / "model.pt")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"checkpoint": str(ckpt), "num_cpus": 0.5, "device": "cpu", "reload_interval_s": 0}),
              name="mvimpute", route_prefix="/")
    body = tmp / "body.json"
    body.write_text(json.dumps(_body(kind)))
    cmd = [
        sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locustfile.py")), "--headless",
        "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{run_time_s}s",
        "--host", f"http://127.0.0.1:{port}", "--only-summary", "--loglevel", "WARNING",
    ]
    summary = tmp / "summary.json"
    env = {**__import__("os").environ, "MVIMPUTE_LOCUST_BODY": str(body), "MVIMPUTE_LOCUST_REQUESTS": str(requests),
           "MVIMPUTE_LOCUST_SUMMARY": str(summary)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=run_time_s + 60)
    finally:
        serve.shutdown()
        ray.shutdown()
    if not summary.exists():
        raise RuntimeError(f"locust wrote no summary (rc {proc.returncode}): {proc.stderr[-2000:]}")
    total = json.loads(summary.read_text())
    result = {
        "bench": "serve-load", "users": users, "requests_cap": requests, "kind": kind, **total,
        "wall_s": time.perf_counter() - t0, "locust_rc": proc.returncode,
    }
    table = ("| users | requests | failures | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|\n"
             f"| {users} | {result['requests']} | {result['failures']} | {result['req_per_s']:.1f} "
             f"| {result['p50_ms']:.0f} | {result['p99_ms']:.0f} |")
    _write(out, "serve_load", result, table)
    return result


def batch_throughput(rows: int = 50_000, repeats: int = 3, out: str = "outputs/bench",
                     checkpoint: str | None = None, batch_size: int = 4096) -> dict:
    """Rows/s of `impute_table` through Ray Data (one actor) vs the same predictor in-process, same file,
    alternating; each Ray run includes its actor start-up, as a user's run does."""
    import ray

    import mvimpute as mvi
    from mvimpute.jobs.impute import impute_table

    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    ckpt = Path(checkpoint) if checkpoint else train_small(tmp / "model.pt")
    data = mvi.load_dataset("digits-halves")
    big = data.subset(np.resize(np.arange(data.n_samples), rows))
    wide = mvi.masking.corrupt(big, view_rate=0.4, mcar_rate=0.2, seed=1).data.to_frame().reset_index(drop=True)
    wide.insert(0, "sample_id", np.arange(rows))
    src = tmp / "in.parquet"
    wide.to_parquet(src, row_group_size=8192, index=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    runs: dict[str, list[float]] = {"ray": [], "local": []}
    t0 = time.perf_counter()
    try:
        for _ in range(repeats):
            for engine in ("ray", "local"):
                r = impute_table(src, tmp / f"out_{engine}.parquet", checkpoint=ckpt, id_column="sample_id",
                                 engine=engine, batch_size=batch_size)
                runs[engine].append(rows / r.seconds)
    finally:
        ray.shutdown()
    ratio = [a / b for a, b in zip(runs["ray"], runs["local"], strict=True)]
    result = {
        "bench": "batch-throughput", "rows": rows, "repeats": repeats, "batch_size": batch_size,
        "rows_per_s": {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
                       for k, v in runs.items()},
        "ratio_ray_over_local": {"median": statistics.median(ratio), "min": min(ratio), "max": max(ratio)},
        "wall_s": time.perf_counter() - t0,
    }
    rp = result["rows_per_s"]
    table = (
        "| engine | rows/s median (min–max) |\n|---|---|\n"
        + "\n".join(f"| {k} | {v['median']:.0f} ({v['min']:.0f}–{v['max']:.0f}) |" for k, v in rp.items())
        + f"\n| ratio ray / local | {result['ratio_ray_over_local']['median']:.2f} "
        f"({result['ratio_ray_over_local']['min']:.2f}–{result['ratio_ray_over_local']['max']:.2f}) |"
    )
    _write(out, "batch_throughput", result, table)
    return result


def _write(out: str, name: str, result: dict, table: str) -> None:
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}.json").write_text(json.dumps(result, indent=2))
    (path / f"{name}.md").write_text(table + "\n")
    print(table, flush=True)
    print(f"wrote {path / name}.json / .md ({result.get('wall_s', 0):.0f} s)", flush=True)


def serve_monitoring(
    repeats: int = 3,
    requests: int = 1000,
    out: str = "outputs/bench",
    checkpoint: str | None = None,
    concurrency: tuple[int, ...] = (32, 1),
) -> dict:
    """The endpoint with monitoring off and at its default share beside a no-op Serve deployment:
    one-instance point requests, req/s and p50 per concurrency. Runs alternate (the order rotates each
    repeat); per repeat the ratios endpoint / no-op and on / off; medians and min–max over repeats.
    The 1-minute load average is read before each cell."""
    import os

    import ray
    from ray import serve

    from mvimpute.endpoint import build_app
    from mvimpute.monitoring import DEFAULT_SHARE

    tmp, ckpt, base, common = _serve_beside_noop("bench-monitor-", checkpoint)
    serve.run(build_app({**common, "monitor_share": 0.0, "name": "Off"}), name="off", route_prefix="/off")
    serve.run(build_app({**common, "monitor_share": DEFAULT_SHARE, "name": "On"}), name="on", route_prefix="/on")
    targets = ["noop", "off", "on"]
    cells: dict[str, list[dict]] = {}
    ratios: dict[str, list[float]] = {}
    t_start = time.perf_counter()
    try:
        for rep in range(repeats):
            order = targets[rep % 3 :] + targets[: rep % 3]
            for c in concurrency:
                got = {}
                for target in order:
                    load = os.getloadavg()[0]
                    got[target] = asyncio.run(_load(f"{base}/{target}/impute", _body("point"), c, requests))
                    got[target]["load_1min"] = load
                    cells.setdefault(f"{target}|point|{c}", []).append(got[target])
                for name, a, b in (("off/noop", "off", "noop"), ("on/noop", "on", "noop"), ("on/off", "on", "off")):
                    ratios.setdefault(f"{name}|req_per_s|{c}", []).append(got[a]["req_per_s"] / got[b]["req_per_s"])
                    ratios.setdefault(f"{name}|p50_ms|{c}", []).append(got[a]["p50_ms"] / got[b]["p50_ms"])
            print(f"repeat {rep + 1}/{repeats} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
        monitored = json.loads(
            subprocess.run(["curl", "-s", f"{base}/on/monitoring"], capture_output=True, text=True, check=True).stdout
        )
    finally:
        serve.shutdown()
        ray.shutdown()
    summary = {k: _summary(v) for k, v in cells.items()}
    ratio_summary = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in ratios.items()}
    loads = [c["load_1min"] for v in cells.values() for c in v]
    result = {
        "bench": "serve-monitoring", "repeats": repeats, "requests_per_cell": requests,
        "monitor_share": DEFAULT_SHARE, "requests_monitored": monitored.get("requests_monitored"),
        "load_1min": {"min": min(loads), "max": max(loads)}, "wall_s": time.perf_counter() - t_start,
        "cells": summary, "ratios": ratio_summary, "runs": cells,
    }  # fmt: skip
    table = _latency_table(summary) + "\n\n| ratio | median (min–max) |\n|---|---|\n" + "\n".join(
        f"| {k} | {v['median']:.2f} ({v['min']:.2f}–{v['max']:.2f}) |" for k, v in ratio_summary.items()
    )
    table += f"\n\nload average (1 min) before the cells: {min(loads):.2f}–{max(loads):.2f}"
    _write(out, "serve_monitoring", result, table)
    return result
