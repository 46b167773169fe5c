"""Models: one file each, one registry. Importing this package registers them all."""

from . import jpvae, tae, vae  # noqa: F401  (register "jpvae", "tae", "mvae", "miwae")
from .base import (
    MODEL_REGISTRY,
    ImputationModel,
    LossOutput,
    ViewInfo,
    build_model,
    register_model,
)

__all__ = ["MODEL_REGISTRY", "ImputationModel", "LossOutput", "ViewInfo", "build_model", "register_model"]
