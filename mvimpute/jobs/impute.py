"""The `impute` job: a model from the registry (or a checkpoint) → the engine's batch pipeline.

    mvimpute impute --model-uri models:/mvimpute-jpvae@champion --input in.parquet --output out.parquet

A registry URI is pinned to one version before any batch runs, so every actor serves the same model.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..predictor import default_model_uri
from .batch import ImputeJobResult
from .batch import impute_table as _impute_checkpoint


def impute_table(
    input: str | Path,
    output: str | Path,
    *,
    checkpoint: str | Path | None = None,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    **options,
) -> ImputeJobResult:
    """Impute a wide table into `output` with a checkpoint, or with the model `model_uri` names
    (default `$MVIMPUTE_MODEL_URI`, else `models:/mvimpute-jpvae@champion`) fetched from the registry.
    `options` are the pipeline's (`mvimpute.jobs.batch.impute_table`)."""
    info = None
    if checkpoint is None:
        from ..registry import fetch_checkpoint

        checkpoint, info = fetch_checkpoint(default_model_uri(model_uri), tracking_uri)
    result = _impute_checkpoint(input, output, checkpoint=checkpoint, info=info, **options)
    if result.monitoring is not None and (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        log_monitoring(result, str(input), tracking_uri)
    return result


def monitoring_metrics(summary: dict) -> dict[str, float]:
    """The monitoring summary's numbers as flat metrics: `monitor/<view>/<stat>` (live values)."""
    out = {}
    for v, s in summary["views"].items():
        out[f"monitor/{v}/degraded"] = float(s["state"] == "degraded")
        for stat, value in s["calibration"].items():
            if isinstance(value, dict) and value.get("live") is not None:
                out[f"monitor/{v}/{stat}"] = value["live"]
        drift = s["drift"]
        for stat in ("psi", "mean_shift"):
            if (drift.get(stat) or {}).get("mean") is not None:
                out[f"monitor/{v}/{stat}"] = drift[stat]["mean"]
        if drift["missing_share"]["live"] is not None:
            out[f"monitor/{v}/missing_share"] = drift["missing_share"]["live"]
    return out


def log_monitoring(result: ImputeJobResult, input: str, tracking_uri: str | None = None) -> None:
    """One MLflow run (experiment `mvimpute-impute`) with the job's monitoring metrics and its JSON."""
    import json
    import tempfile

    from ..tracking import log_evaluation

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "monitoring.json"
        path.write_text(json.dumps(result.monitoring, indent=1))
        config = {"input": input, "output": str(result.output), "rows": result.rows}
        config["model"] = result.monitoring["model"]
        log_evaluation(config, monitoring_metrics(result.monitoring), [path], tracking_uri, "mvimpute-impute", "impute")


__all__ = ["impute_table"]
