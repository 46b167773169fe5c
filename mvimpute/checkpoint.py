"""Self-describing checkpoints: weights + model name + configs + scaling statistics + view schema.

Format versions: 1 — the first; 2 — adds the split-conformal calibration (`calibration.*` buffers
in the state dict), TAE's mask-conditioned q(x|z, m) (`posterior_conditions_on_mask`), the
`binary` / `bounded` likelihoods and JPVAE's Σ̂ with the encoders' variance. Version-1
checkpoints still load: uncalibrated (draws and intervals are the raw ones), TAE with the
paper's q(x|z), JPVAE with its means-only Σ̂ (refit to change that).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from . import storage
from .data.multiview import ViewSchema
from .files import atomic_write
from .models import build_model
from .models.base import ImputationModel, ViewInfo

FORMAT = "mvimpute-checkpoint"
VERSION = 2
CHECKPOINT_FILE = "model.pt"  # the file's name inside a checkpoint directory (Ray Train, MLflow artifacts)


def checkpoint_file(path: str | Path) -> Path:
    """`path` itself, or `path/model.pt` when `path` is a checkpoint directory. A URI (`s3://…`, a
    checkpoint file or a folder holding `model.pt`) is fetched first (`fetch_checkpoint`)."""
    if storage.is_uri(path):
        return fetch_checkpoint(str(path))
    path = Path(path)
    return path / CHECKPOINT_FILE if path.is_dir() else path


def fetch_checkpoint(uri: str) -> Path:
    """The checkpoint at `uri` copied to a local temporary file (read through pyarrow's filesystems,
    like every other URI): the file itself or, for a folder, its `model.pt`. A missing object is a
    `FileNotFoundError` naming the URI."""
    import hashlib
    import os
    import tempfile
    import threading

    import pyarrow.fs as pafs

    fs, inner = storage.filesystem(uri)
    inner = inner.rstrip("/")
    try:
        kind = fs.get_file_info(inner).type
        if kind == pafs.FileType.Directory:
            inner = f"{inner}/{CHECKPOINT_FILE}"
            kind = fs.get_file_info(inner).type
    except OSError as err:
        raise FileNotFoundError(f"no checkpoint at {uri} ({err})") from None
    if kind != pafs.FileType.File:
        raise FileNotFoundError(f"no checkpoint at {uri}")
    # one local copy per URI (fetched again each time: the object may have changed), not a new folder
    # per read, so a process that reloads a model does not fill its temporary disk; written beside and
    # renamed into place, so a process reading it meanwhile never sees half a file
    folder = Path(tempfile.gettempdir()) / "mvimpute-checkpoints" / hashlib.sha1(uri.encode()).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{os.getpid()}-{threading.get_ident()}.part"
    pafs.copy_files(inner, str(part), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    local = folder / CHECKPOINT_FILE
    os.replace(part, local)
    return local


def view_infos(schema: ViewSchema) -> list[ViewInfo]:
    return [ViewInfo(v, len(cols), schema.likelihoods[v]) for v, cols in schema.columns.items()]


def checkpoint_dict(model: ImputationModel, schema: ViewSchema, train_config=None, extra: dict | None = None) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model.name,
        "model_config": asdict(model.config),
        "train_config": asdict(train_config) if train_config is not None else None,
        "schema": schema.state(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "training_rows": model.training_rows_held(),  # None, or what of the training data the state holds (KNN)
        **(extra or {}),
    }


def save_checkpoint(
    path: str | Path, model: ImputationModel, schema: ViewSchema, train_config=None, extra: dict | None = None
) -> Path:
    return atomic_write(path, lambda tmp: torch.save(checkpoint_dict(model, schema, train_config, extra), tmp))


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> dict:
    """The state a checkpoint file (or a directory holding `model.pt`) holds, checked.

    A missing file is a `FileNotFoundError`; an empty, truncated or foreign file a `ValueError` that
    says so (torch's own message advises `weights_only=False`, wrong for a file that is not a
    checkpoint at all and unsafe for one from elsewhere)."""
    try:
        path = checkpoint_file(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{what}: {err}") from None
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no checkpoint at {path}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{what}: {path} is empty (0 bytes), not an mvimpute checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for damaged files
        raise ValueError(
            f"{what}: {path} ({size} bytes) is damaged or not an mvimpute checkpoint (torch.load: {type(err).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{what}: {path} is not an mvimpute checkpoint")
    version = state.get("version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{what}: {path} has no valid checkpoint version ({version!r})")
    if version > VERSION:
        raise ValueError(
            f"{what}: {path} has checkpoint version {version}; this mvimpute reads versions 1 to {VERSION}: "
            "upgrade mvimpute"
        )
    return state


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[ImputationModel, ViewSchema, dict]:
    """Rebuild the model and schema from a checkpoint file (or a directory holding `model.pt`) alone."""
    state = read_checkpoint(path, map_location)
    path = checkpoint_file(path)
    version = state["version"]
    schema = ViewSchema.from_state(state["schema"])
    model_config = dict(state["model_config"])
    if version == 1 and state["model"] == "tae":
        model_config.setdefault("posterior_conditions_on_mask", False)
    model = build_model(state["model"], view_infos(schema), **model_config)
    result = model.load_state_dict(state["state_dict"], strict=version >= 2)
    if version == 1:
        missing = [k for k in result.missing_keys if not k.startswith("calibration.")]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{path}: version-1 checkpoint does not match model {state['model']!r} "
                f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
            )
    state["model_config"] = model_config
    model.eval()
    return model, schema, state
