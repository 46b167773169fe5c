"""Resources for Ray Train workers and Tune trials, planned so that Ray Data's tasks keep a CPU and a
request the cluster cannot meet fails before anything starts, naming what to change."""

from __future__ import annotations

from collections.abc import Mapping

TRIAL_CPU = 0.01  # a trial's own actor only waits on its Ray Train run (whose controller takes 0 CPU)


class ResourceRequestError(ValueError):
    """A Ray Train request the cluster cannot meet (more workers than CPUs, GPUs where there are none)."""


def plan_worker_resources(
    num_workers: int,
    use_gpu: bool = False,
    resources_per_worker: Mapping[str, float] | None = None,
    cluster: Mapping[str, float] | None = None,
    wait_for_resources: bool = False,
) -> dict[str, float]:
    """Resources for each Ray Train worker that leave room for Ray Data's tasks, checked against `cluster`
    (`ray.cluster_resources()`) so that a request the cluster cannot meet fails now, naming it.

    Ray Train reserves its workers' resources for the whole run and Ray Data schedules its read and
    transform tasks (1 CPU each) in what is left: on 2 CPUs, two 1-CPU workers leave none and the
    run waits for ever. By default each worker gets `min(1, (CPUs - 1) / num_workers)` CPUs (one CPU
    kept for Ray Data; fractional CPUs when the cluster is small) and one GPU with `use_gpu`.
    An explicit `resources_per_worker` is used as given but must leave one CPU free as well.
    `wait_for_resources` (autoscaling clusters, whose nodes appear on demand) skips the checks.
    """
    cluster = dict(cluster or {})
    total_cpu = float(cluster.get("CPU", 0.0))
    total_gpu = float(cluster.get("GPU", 0.0))
    if resources_per_worker:
        res = {k: float(v) for k, v in resources_per_worker.items()}
        if use_gpu:
            res.setdefault("GPU", 1.0)
    else:
        cpu = 1.0 if wait_for_resources else min(1.0, max(total_cpu - 1.0, 0.0) / num_workers)
        res = {"CPU": round(cpu, 4)}
        if use_gpu:
            res["GPU"] = 1.0
    if wait_for_resources:
        return res
    have = f"the cluster has {total_cpu:g} CPU(s) and {total_gpu:g} GPU(s)"
    if use_gpu and total_gpu < num_workers * res.get("GPU", 1.0):
        raise ResourceRequestError(
            f"asked for {num_workers} worker(s) with {res.get('GPU', 1.0):g} GPU each (--use-gpu), but {have}; "
            "train on CPUs (--no-gpu) or, on an autoscaling cluster, set cluster.wait_for_resources=true"
        )
    if num_workers > total_cpu or total_cpu < 2.0:
        raise ResourceRequestError(
            f"asked for {num_workers} worker(s), but {have}: each worker needs a share of a CPU and Ray Data "
            f"one CPU for its tasks; use --num-workers {max(int(total_cpu) - 1, 1)} or fewer on a cluster of at "
            "least 2 CPUs (cluster.wait_for_resources=true where it autoscales)"
        )
    need = num_workers * res.get("CPU", 0.0)
    if total_cpu - need < 1.0 - 1e-9:
        raise ResourceRequestError(
            f"asked for {num_workers} worker(s) × {res} = {need:g} CPU(s), but {have}: that leaves "
            f"{max(total_cpu - need, 0):g} CPU for Ray Data's tasks (they need 1) and the run would wait for ever; "
            "lower cluster.resources_per_worker.CPU or --num-workers"
        )
    return res


def plan_sweep_resources(
    num_workers: int,
    max_concurrent: int | None,
    num_samples: int,
    cluster: Mapping[str, float],
    use_gpu: bool = False,
    wait_for_resources: bool = False,
) -> tuple[dict, dict, int]:
    """(trial actor resources, per-worker resources, concurrent trials) that fit the cluster with one CPU
    left to Ray Data's tasks, so that no trial waits for ever: by default as many trials at once as
    the CPUs hold (one on 2 CPUs), each worker `min(1, (CPUs − 1 − trials × 0.01) / (trials × workers))` CPU."""
    total = float(cluster.get("CPU", 0.0))
    c = max_concurrent or max(1, min(num_samples, int((total - 1) // num_workers) if total >= 2 else 1))
    trial = {"CPU": TRIAL_CPU}
    if wait_for_resources:
        return trial, plan_worker_resources(num_workers, use_gpu, None, cluster, True), c
    avail = total - 1.0 - c * TRIAL_CPU
    if avail <= 0 or num_workers * c > total:
        raise ResourceRequestError(
            f"asked for {c} concurrent trial(s) × {num_workers} worker(s), but the cluster has {total:g} CPU(s) "
            f"and Ray Data needs one: use --max-concurrent-trials {max(1, int(max(total - 1, 1) // num_workers))} "
            "or fewer workers"
        )
    per = {"CPU": round(min(1.0, avail / (num_workers * c)), 4)}
    if use_gpu:
        per["GPU"] = 1.0
    plan_worker_resources(num_workers * c, use_gpu, per, cluster)  # the cluster-wide checks (GPUs, CPU left)
    return trial, per, c


__all__ = ["TRIAL_CPU", "ResourceRequestError", "plan_sweep_resources", "plan_worker_resources"]
