"""Models: one file each, one registry. Importing this package registers them all."""

from .base import (
    MODEL_REGISTRY,
    ImputationModel,
    LossOutput,
    ViewInfo,
    build_model,
    register_model,
)
from . import jpvae  # noqa: F401  (registers "jpvae")

__all__ = ["MODEL_REGISTRY", "ImputationModel", "LossOutput", "ViewInfo", "build_model", "register_model"]
