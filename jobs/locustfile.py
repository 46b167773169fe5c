"""Locust users for `python jobs/bench.py serve-load`: POST /impute with a fixed body, loopback only,
a fixed number of requests in all (MVIMPUTE_LOCUST_REQUESTS), then the run stops itself."""

import itertools
import os
from pathlib import Path

from locust import HttpUser, constant, events, task

BODY = Path(os.environ["MVIMPUTE_LOCUST_BODY"]).read_bytes()
CAP = int(os.environ.get("MVIMPUTE_LOCUST_REQUESTS", "1000"))
_sent = itertools.count()


class ImputeUser(HttpUser):
    wait_time = constant(0)

    @task
    def impute(self):
        if next(_sent) >= CAP:
            self.environment.runner.quit()
            return
        with self.client.post("/impute", data=BODY, headers={"content-type": "application/json"},
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")


@events.init.add_listener
def _loopback_only(environment, **_):
    host = environment.host or ""
    if not host.startswith(("http://127.", "http://localhost")):
        raise SystemExit(f"refusing to load-test {host!r}: loopback only")


@events.test_stop.add_listener
def _summary(environment, **_):
    """Totals for the benchmark (the CSV files can miss requests when the run stops itself)."""
    out = os.environ.get("MVIMPUTE_LOCUST_SUMMARY")
    if not out:
        return
    import json

    t = environment.stats.total
    Path(out).write_text(json.dumps({
        "requests": t.num_requests, "failures": t.num_failures, "req_per_s": t.total_rps,
        "p50_ms": t.get_response_time_percentile(0.5), "p99_ms": t.get_response_time_percentile(0.99),
    }))
