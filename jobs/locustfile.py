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


@events.init.connect
def _loopback_only(environment, **_):
    host = environment.host or ""
    if not host.startswith(("http://127.", "http://localhost")):
        raise SystemExit(f"refusing to load-test {host!r}: loopback only")
