"""The online imputation endpoint: a Ray Serve deployment with a FastAPI ingress around `Predictor`.

    serve run serve/config.yaml     # import_path mvimpute.endpoint:build_app; or `mvimpute serve`
    curl -s localhost:8000/impute -H 'content-type: application/json' -d '{"instances": [{"top": [...]}]}'

`POST /impute`, `GET /healthz`, `GET /metadata`, `GET /monitoring`, OpenAPI at `/docs`. Every error is a
4xx whose `loc` names the instance, view and position. Concurrent requests are batched (`@serve.batch`)
into one forward pass; a request that finds the replica idle goes straight to the model (no batch
wait). A replica serving a registry alias reloads when the alias moves (`reload_interval_s`).

A share of requests (`monitor_share`) is also scored after its response is computed, on the model's
thread (`mvimpute.monitoring`): observed entries and views hidden and imputed again, and the input's
drift, against the training reference the checkpoint keeps; `GET /monitoring` and Ray Serve's
metrics (exported to Prometheus as `ray_mvimpute_monitor_*`) show it.
"""

import asyncio
import logging
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Literal

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, Strict
from ray import serve

from .monitoring import DEFAULT_SHARE, DEFAULT_WINDOW, LEVELS, Monitor
from .predictor import InputError, InstanceRequest, Predictor, max_training_rows

logger = logging.getLogger("ray.serve")

Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]  # no strings, no booleans, no ±Inf / NaN
ReturnKind = Literal["mean", "std", "interval", "samples"]
METRICS_INTERVAL_S = 1.0  # the monitoring gauges are set at most this often (and on each GET /monitoring)


class AppArgs(BaseModel):
    """Arguments of `build_app` (the `args:` of serve/config.yaml, the options of `mvimpute serve`)."""

    model_config = ConfigDict(extra="forbid")

    model_uri: str | None = Field(None, description="MLflow model URI; default $MVIMPUTE_MODEL_URI, else the champion")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI")
    checkpoint: str | None = Field(None, description="A local checkpoint instead of a registered model")
    device: str = "auto"
    max_batch_size: int = Field(32, ge=1, description="@serve.batch size; 1 turns batching off")
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    max_n_samples: int = Field(1000, ge=2, description="the most posterior draws one request may ask for")
    max_instances: int = Field(1000, ge=1, description="the most instances in one request")
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="a larger request body is refused (413)")
    max_training_rows: int | None = Field(
        None, ge=1, description="refuse a model holding more training rows (KNN); default $MVIMPUTE_MAX_TRAINING_ROWS"
    )
    reload_interval_s: float = Field(30.0, ge=0, description="registry poll for a moved alias; 0: never")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(16, gt=0)
    max_ongoing_requests: int | None = Field(None, ge=1, description="default: 2 × max_batch_size, at least 8")
    name: str = "Imputer"
    monitor_share: float = Field(
        DEFAULT_SHARE, ge=0, le=1, description="share of requests scored for live calibration and drift; 0: off"
    )
    monitor_window: int = Field(DEFAULT_WINDOW, ge=10, description="monitored instances the live values cover")
    seed: int | None = Field(None, description="seed the replica's draws (a fixed request sequence: fixed answers)")


class ImputeRequest(BaseModel):
    """`instances`: one object per sample, view name → list of numbers (null = missing entry), or null /
    left out for a wholly missing view. `return`: what to send back besides the mean."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    instances: list[dict[str, list[Number | None] | None]] = Field(min_length=1)
    ids: list[str | int] | None = Field(None, description="one id per instance, echoed back")
    n_samples: int = Field(100, ge=0, description="posterior draws for std, interval and samples")
    return_: list[ReturnKind] = Field(default_factory=lambda: ["mean"], alias="return")
    level: float = Field(0.9, gt=0, lt=1, description="coverage of the central interval")


class InstancePrediction(BaseModel):
    id: str | int | None = None
    mean: dict[str, list[float]] = Field(description="completed values per view; observed entries unchanged")
    std: dict[str, list[float]] | None = Field(None, description="posterior std per entry (0 where observed)")
    lower: dict[str, list[float]] | None = None
    upper: dict[str, list[float]] | None = None
    samples: dict[str, list[list[float]]] | None = Field(None, description="per view (n_samples, width) draws")


class ImputeResponse(BaseModel):
    model: dict
    n_samples: int | None = None
    level: float | None = None
    predictions: list[InstancePrediction]


class HealthResponse(BaseModel):
    status: str
    model_version: str | None = None


def _error(loc: Sequence, msg: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body", *loc), "msg": msg, "input": None}])


class BodySizeLimit:
    """Refuse request bodies above `app.state.max_body_bytes` with a 413 naming the body (by the
    Content-Length header, or while reading a chunked body). Starlette has no such limit built in."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = getattr(scope["app"].state, "max_body_bytes", None) if "app" in scope else None
        if limit is None:
            return await self.app(scope, receive, send)

        async def refuse(size: str):
            detail = [{"type": "too_large", "loc": ["body"], "msg": f"request body of {size} exceeds {limit} bytes"}]
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)

        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await refuse(f"{int(length)} bytes")
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await refuse(f"more than {limit} bytes")


class _TooLarge(Exception):
    pass


api = FastAPI(
    title="mvimpute",
    summary="Missing-view imputation with honest uncertainty",
    description=__doc__,
    version="1",
)
api.add_middleware(BodySizeLimit)


@api.exception_handler(RequestValidationError)
async def _validation_error(request, exc: RequestValidationError) -> JSONResponse:
    """422 with `loc`, `msg`, `type` per error and the offending value only when it is a scalar (FastAPI's
    own handler echoes whole inputs, and cannot render an ±Inf it was sent)."""
    detail = []
    for e in exc.errors():
        item = {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")}
        value = e.get("input")
        if isinstance(value, str | int | float | bool) and not isinstance(value, dict):
            item["input"] = value if isinstance(value, str | bool | int) or math.isfinite(value) else str(value)
        detail.append(item)
    return JSONResponse({"detail": detail}, status_code=422)


def load_predictor(a: AppArgs) -> Predictor:
    """The predictor a replica serves; a model holding more training rows than allowed is refused."""
    return Predictor.load(
        a.checkpoint, a.model_uri, a.tracking_uri, device=a.device, max_training_rows=a.max_training_rows
    )


class MonitorMetrics:  # defined above `Imputer`: Serve pickles the class with the globals it finds then
    """The monitoring summary as Ray Serve custom metrics (Prometheus: `ray_mvimpute_monitor_*`); Serve
    adds the deployment, replica and application tags."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.calibration = metrics.Gauge(
            "mvimpute_monitor_calibration",
            "live and reference scores on hidden observed entries (scaled space)",
            tag_keys=("view", "stat", "source"),
        )
        self.drift = metrics.Gauge(
            "mvimpute_monitor_drift", "input drift of observed values against training", tag_keys=("view", "stat")
        )
        self.degraded = metrics.Gauge(
            "mvimpute_monitor_degraded", "1 when live coverage left its band around the reference", tag_keys=("view",)
        )
        self.rows = metrics.Gauge(
            "mvimpute_monitor_rows", "scored instances in the monitoring window", tag_keys=("view",)
        )  # fmt: skip
        self.requests = metrics.Counter("mvimpute_monitor_requests", "requests scored by monitoring")

    def publish(self, summary: dict) -> None:
        for v, s in summary["views"].items():
            cal = s["calibration"]
            for stat in ("coverage_50", "coverage_90", "width_50", "width_90", "crps", "rmse"):
                for source in ("live", "reference"):
                    value = cal[stat][source]
                    if value is not None:
                        self.calibration.set(value, tags={"view": v, "stat": stat, "source": source})
            for level in LEVELS:
                key = f"coverage_{round(level * 100)}"
                self.calibration.set(level, tags={"view": v, "stat": key, "source": "nominal"})
            drift = s["drift"]
            values = {
                "missing_share": drift["missing_share"]["live"],
                "reference_missing_share": drift["missing_share"]["reference"],
                **{f"psi_{k}": x for k, x in (drift.get("psi") or {}).items()},
                **{f"mean_shift_{k}": x for k, x in (drift.get("mean_shift") or {}).items()},
            }
            for stat, value in values.items():
                if value is not None:
                    self.drift.set(value, tags={"view": v, "stat": stat})
            self.degraded.set(1.0 if s["state"] == "degraded" else 0.0, tags={"view": v})
            self.rows.set(cal["rows"], tags={"view": v})


@serve.deployment
@serve.ingress(api)
class Imputer:
    """The predictor behind the HTTP routes; one per replica."""

    def __init__(self, args: dict) -> None:
        self.args = a = AppArgs(**args)
        api.state.max_body_bytes = a.max_body_bytes
        self.predictor = self._stamped(load_predictor(a))
        if a.seed is not None:  # after loading: the first request's draws depend on the seed alone
            import torch

            torch.manual_seed(a.seed)
        self.monitor = self._monitor(self.predictor)
        self._metrics = MonitorMetrics()
        self._published_at = -math.inf
        self._in_flight = 0  # requests inside `_impute`: one alone skips the batch wait
        # one thread runs the model: the event loop keeps accepting (and batching) requests meanwhile
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mvimpute-predict")
        self._impute_batched.set_max_batch_size(self.args.max_batch_size)
        self._impute_batched.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        self._stop = threading.Event()
        if self.predictor.follows_alias and self.args.reload_interval_s > 0:
            threading.Thread(target=self._watch_alias, daemon=True, name="mvimpute-reload").start()

    @staticmethod
    def _stamped(predictor: Predictor) -> Predictor:
        predictor.info["loaded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return predictor

    def _watch_alias(self) -> None:
        """Reload when the registry alias this replica serves points at another version."""
        while not self._stop.wait(self.args.reload_interval_s):
            uri = self.predictor.info.get("model_uri")
            try:
                fresh = self.predictor.reload_if_moved()
                if fresh is not None:
                    self.monitor = self._monitor(fresh)  # live values against the new model's reference
                    self.predictor = self._stamped(fresh)  # one reference swap: a request sees the old or the new
                    logger.info("reloaded %s: version %s", uri, fresh.info.get("version"))
            except Exception as err:  # a registry hiccup must not take the replica down
                logger.warning("alias check for %s failed: %s", uri, err)

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    # -- the model call, batched across requests
    def _predict_jobs(self, jobs: list[InstanceRequest]) -> list:
        return self.predictor.predict_requests(jobs)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _impute_batched(self, jobs: list[InstanceRequest]) -> list:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._predict_jobs, jobs)

    async def _impute(self, job: InstanceRequest):
        # @serve.batch waits batch_wait_timeout_s for company even when none can come: a request that
        # finds no other in flight goes straight to the model thread; under load requests batch as before
        self._in_flight += 1
        try:
            if self.args.max_batch_size > 1 and self._in_flight > 1:
                return await self._impute_batched(job)
            return (await asyncio.get_running_loop().run_in_executor(self._pool, self._predict_jobs, [job]))[0]
        finally:
            self._in_flight -= 1

    # -- monitoring, on the model thread after the response is computed
    def _monitor(self, predictor: Predictor) -> Monitor:
        a = self.args
        return Monitor.for_imputer(
            predictor.imputer, share=a.monitor_share, window=a.monitor_window, seed=a.seed or 0
        )  # fmt: skip

    def _observe(self, monitor: Monitor, job: InstanceRequest) -> None:
        try:
            monitor.observe(job.data)
            self._metrics.requests.inc()
            # the gauges at most once a second (Ray exports them every few seconds): a summary costs ~1 ms
            if time.monotonic() - self._published_at >= METRICS_INTERVAL_S:
                self._publish(monitor.summary())
        except Exception as err:  # monitoring must never take the replica down
            logger.warning("monitoring a request failed: %s", err)

    def _publish(self, summary: dict) -> dict:
        self._published_at = time.monotonic()
        self._metrics.publish(summary)
        return summary

    # -- routes
    @api.post("/impute", response_model=ImputeResponse, response_model_exclude_none=True)
    async def impute(self, body: ImputeRequest):
        """Complete each instance: the posterior mean, and on request std, a central interval and draws."""
        a = self.args
        if len(body.instances) > a.max_instances:
            raise _error(["instances"], f"{len(body.instances)} instances; at most {a.max_instances} per request")
        outputs = tuple(dict.fromkeys(["mean", *body.return_]))
        draws = any(o != "mean" for o in outputs)
        if body.n_samples > a.max_n_samples:
            raise _error(["n_samples"], f"n_samples {body.n_samples} exceeds the cap of {a.max_n_samples}")
        if draws and body.n_samples < 2:
            raise _error(["n_samples"], f"std, interval and samples need n_samples ≥ 2, got {body.n_samples}")
        if body.ids is not None and len(body.ids) != len(body.instances):
            raise _error(["ids"], f"{len(body.ids)} ids for {len(body.instances)} instances")
        predictor = self.predictor
        try:
            job = predictor.request(body.instances, body.ids, outputs, body.n_samples, body.level)
        except InputError as err:
            raise _error(["instances", *err.loc], err.message) from None
        items = await self._impute(job)
        monitor = self.monitor
        if monitor.sampled():  # queued behind this batch on the model thread; the response does not wait
            self._pool.submit(self._observe, monitor, job)
        content = {"model": self._model_ref(predictor), "predictions": items}
        if draws:
            content["n_samples"] = body.n_samples
        if "interval" in outputs:
            content["level"] = body.level
        return JSONResponse(content)

    @api.get("/healthz", response_model=HealthResponse)
    async def healthz(self):
        return {"status": "ok", "model_version": self.predictor.info.get("version")}

    @api.get("/metadata")
    async def metadata(self) -> dict:
        """Model name, version and alias, views with widths and likelihoods, calibration, serving limits."""
        a = self.args
        return {
            **self.predictor.metadata(),
            "serving": {
                "max_batch_size": a.max_batch_size,
                "batching": a.max_batch_size > 1,
                "max_n_samples": a.max_n_samples,
                "max_instances": a.max_instances,
                "max_body_bytes": a.max_body_bytes,
                "reload_interval_s": a.reload_interval_s if self.predictor.follows_alias else None,
                "max_training_rows": max_training_rows(a.max_training_rows),
            },
        }

    @api.get("/monitoring")
    async def monitoring(self) -> dict:
        """Live calibration (50 % / 90 % coverage, width, CRPS, RMSE on hidden observed entries) and input
        drift (mean shift, PSI, missing-view share) per view, each beside its training reference, and an
        `ok` / `degraded` state per view; see mvimpute/monitoring.py."""
        predictor, monitor = self.predictor, self.monitor
        # on the model thread: after every monitoring job queued before this call
        summary = await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: self._publish(monitor.summary())
        )  # fmt: skip
        return {"model": self._model_ref(predictor), **summary}

    @staticmethod
    def _model_ref(predictor: Predictor) -> dict:
        """Which model answers: registered name, version, alias, run and URI, the model kind and the
        checkpoint's digest — never where its files sit on the server."""
        info = predictor.info
        ref = {k: info[k] for k in ("name", "version", "alias", "run_id", "model_uri") if info.get(k)}
        ref["model"] = predictor.imputer.model_name
        if info.get("checkpoint_sha256"):
            ref["checkpoint_sha256"] = info["checkpoint_sha256"]
        return ref


def build_app(args: dict | None = None):
    """The Serve application (`import_path: mvimpute.endpoint:build_app`); `args` as in `AppArgs`."""
    a = AppArgs(**(args or {}))
    max_ongoing = a.max_ongoing_requests or max(8, 2 * a.max_batch_size)
    if max_ongoing < a.max_batch_size:
        raise ValueError(f"max_ongoing_requests {max_ongoing} < max_batch_size {a.max_batch_size}: batches never fill")
    return Imputer.options(
        name=a.name,
        max_ongoing_requests=max_ongoing,
        autoscaling_config={
            "min_replicas": a.min_replicas,
            "initial_replicas": max(1, a.min_replicas),
            "max_replicas": max(a.max_replicas, a.min_replicas, 1),
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": 5,
            "downscale_delay_s": 60,
        },
        ray_actor_options={"num_cpus": a.num_cpus, "num_gpus": a.num_gpus},
    ).bind(a.model_dump())
