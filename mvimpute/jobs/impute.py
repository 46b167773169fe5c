"""The `impute` job: a model from the registry (or a checkpoint) → the engine's batch pipeline.

    mvimpute impute --model-uri models:/mvimpute-jpvae@champion --input in.parquet --output out.parquet

A registry URI is pinned to one version before any batch runs, so every actor serves the same model.
"""

from __future__ import annotations

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
    return _impute_checkpoint(input, output, checkpoint=checkpoint, info=info, **options)


__all__ = ["impute_table"]
