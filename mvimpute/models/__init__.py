"""Models: one file each, one registry. Importing this package registers them all."""

from . import classic, jpvae, tae, vae  # noqa: F401  (register "jpvae", "tae", "mvae", "miwae", "mean", "knn", "mice")
from .base import (
    MODEL_REGISTRY,
    ImputationModel,
    LossOutput,
    ViewInfo,
    build_model,
    register_model,
)

__all__ = ["MODEL_REGISTRY", "ImputationModel", "LossOutput", "ViewInfo", "build_model", "register_model"]
