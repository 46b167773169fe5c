"""The MLflow model registry as the predictor, the batch job and the endpoint see it: the tracking
URI, where a `models:/name@alias` points now, a registered model's checkpoint, aliases.

Sits below the predictor (imports neither it nor the logging side, `tracking.py`). The tracking URI
is `MLFLOW_TRACKING_URI` when set, else `sqlite:///mlflow.db`, MLflow 3's own default.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's default: a plain `mlflow` here finds it
CHAMPION = "champion"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?/?$")


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri`, else `MLFLOW_TRACKING_URI`, else the embedded SQLite store; relative SQLite paths made absolute
    (Ray workers run in other directories)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def client(tracking_uri: str | None = None) -> MlflowClient:
    """A client whose registry is the tracking store itself (not a `MLFLOW_REGISTRY_URI` left by another run)."""
    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(uri, registry_uri=uri)


def is_alias(model_uri: str | None) -> bool:
    """Whether `model_uri` names a registry alias (`models:/name@alias`), which can move."""
    m = _MODELS_URI.match(model_uri or "")
    return bool(m and m["alias"])


def model_version(model_uri: str, tracking_uri: str | None = None) -> dict:
    """Where `models:/name@alias` or `models:/name/version` points now: name, version, alias, run_id
    (a cheap registry call, for noticing that an alias moved); other URIs are returned as they are."""
    m = _MODELS_URI.match(model_uri)
    if not m:
        return {"model_uri": model_uri}
    registry = client(tracking_uri)
    name, alias, version = m["name"], m["alias"], m["version"]
    if alias:
        mv = registry.get_model_version_by_alias(name, alias)
    elif version and version.isdigit():
        mv = registry.get_model_version(name, version)
    else:  # models:/name/Production style stages, or just the name: the latest version
        mv = max(registry.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    return {"model_uri": model_uri, "name": name, "version": str(mv.version), "alias": alias, "run_id": mv.run_id}


def fetch_checkpoint(model_uri: str, tracking_uri: str | None = None, dst: str | Path | None = None):
    """Download a logged mvimpute model's checkpoint (not its code): (local checkpoint path, where it came from).

    A `models:/name@alias` URI is pinned to the version the alias names now, so the checkpoint and
    the reported version agree even if the alias moves during the download."""
    uri = resolve_tracking_uri(tracking_uri)
    info = model_version(model_uri, uri)
    if "version" in info:
        source = client(uri).get_model_version_download_uri(info["name"], info["version"]).rstrip("/") + "/artifacts"
    else:
        source = model_uri.rstrip("/") + "/artifacts"
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="mvimpute-model-"))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=uri))
    found = sorted(local.rglob("*.pt"))
    if not found:
        raise ValueError(f"{model_uri!r} is not an mvimpute model: no checkpoint among its artifacts")
    return found[0], info


def set_alias(model_uri: str, alias: str, tracking_uri: str | None = None) -> None:
    """Point `alias` of a registered model at the version `models:/name/version` names."""
    info = model_version(model_uri, tracking_uri)
    client(tracking_uri).set_registered_model_alias(info["name"], alias, info["version"])


def load_pyfunc(model_uri: str, tracking_uri: str | None = None):
    """Load a logged or registered model (`models:/name/version`) as an `mlflow.pyfunc` model."""
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.pyfunc.load_model(model_uri)


__all__ = [
    "CHAMPION",
    "DEFAULT_TRACKING_URI",
    "client",
    "fetch_checkpoint",
    "is_alias",
    "load_pyfunc",
    "model_version",
    "resolve_tracking_uri",
    "set_alias",
]
