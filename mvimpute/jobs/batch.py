"""The batch pipeline: a wide table imputed by Ray Data `map_batches` with the `Predictor` in an actor
pool (or in this process), from a local checkpoint; `mvimpute.jobs.impute` resolves registry URIs.

    impute_table("in.parquet", "out.parquet", checkpoint="model.pt", id_column="sample_id",
                 outputs=("mean", "std", "interval"), n_samples=100)

Input: Parquet (a file or a folder of files) or CSV, columns `view:feature` (NaN / empty = missing)
and optionally an id column. Output: one Parquet (or CSV) file with the same rows in the same
order, the id, every feature column completed (observed values unchanged, bit for bit) and, on
request, `<column>__std`, `<column>__lower` / `__upper` (central `level` interval) and
`<column>__draws` (a list of draws). The file appears only when every batch has succeeded: it is
written to a temporary file beside the target and renamed into place.

The checkpoint is read once by the driver and shipped to the actors through the object store, so
every actor serves the same model and no actor needs the registry or a shared file system.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..checkpoint import checkpoint_file
from ..data.multiview import COLUMN_SEP
from ..files import AtomicFile
from ..predictor import InputError, Predictor

_MISSING = "__mvimpute_missing__"
_ERROR = "__mvimpute_error__"  # per-row count of filled entries, dropped by the driver
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
BATCH_SIZE = 4096


def table_format(path: str | Path, role: str) -> str:
    path = Path(path)
    if role == "input" and path.is_dir():
        return "parquet"
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError((role,), f"{str(path)!r}: use a file ending in one of {sorted(FORMATS)}", what=None)
    return fmt


@dataclass
class ImputeJobResult:
    output: Path
    rows: int
    missing_filled: int
    seconds: float
    model: dict


class ImputeBatch:
    """The Ray Data actor: rebuilds the predictor from the checkpoint bytes once, then imputes batches."""

    def __init__(self, checkpoint_ref, device: str, id_column: str | None, options: dict) -> None:
        import ray

        blob = ray.get(checkpoint_ref[0]) if isinstance(checkpoint_ref, list) else checkpoint_ref
        fd, path = tempfile.mkstemp(suffix=".pt")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        try:
            self.predictor = Predictor.from_checkpoint(path, device=device)
        finally:
            os.unlink(path)
        self.id_column = id_column
        self.options = options

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        try:
            out = impute_frame(self.predictor, batch, self.id_column, **self.options)
        except ValueError as err:
            # handed to the driver as data: it stops the run cleanly (a raising actor can be left holding its CPU)
            return pa.table({_ERROR: [str(err)]})
        out[_MISSING] = _n_missing(batch, self.predictor, self.id_column, per_row=True)
        # an Arrow table, so draws stay list<double> columns (Ray would turn arrays into tensor columns)
        return pa.Table.from_pandas(out, preserve_index=False)


def impute_frame(predictor: Predictor, frame: pd.DataFrame, id_column: str | None = None, **options) -> pd.DataFrame:
    """One batch: the completed frame, the id column where it was, feature columns in the input's dtype
    when that is a float type (so observed values come back bit for bit)."""
    out = predictor.predict_frame(frame, id_column=id_column, **options)
    for c in frame.columns:
        dtype = getattr(frame[c].dtype, "numpy_dtype", frame[c].dtype)  # Arrow-backed columns: their numpy type
        if c != id_column and c in out.columns and isinstance(dtype, np.dtype) and dtype.kind == "f":
            out[c] = out[c].astype(dtype)
    if id_column is not None:
        pos = list(frame.columns).index(id_column)
        ids = out.pop(id_column)
        out.insert(pos, id_column, ids)
    return out


def check_columns(predictor: Predictor, columns: Sequence[str], dtypes: dict, id_column: str | None) -> None:
    """The table's columns against the model before any work starts: an `InputError` naming the column."""
    if id_column is not None and id_column not in columns:
        raise InputError((id_column,), f"no id column {id_column!r}; the table has {list(columns)[:8]}...", what=None)
    expected = {f"{v}{COLUMN_SEP}{c}" for v, cs in predictor.schema.columns.items() for c in cs}
    for c in columns:
        if c == id_column:
            continue
        if COLUMN_SEP not in c:
            raise InputError(
                (c,), f"column {c!r} is not named 'view{COLUMN_SEP}feature' (nor is it the id column)", what=None
            )
        view = c.split(COLUMN_SEP, 1)[0]
        if view not in predictor.schema.columns:
            raise InputError(
                (c,), f"column {c!r}: unknown view {view!r}; the model has views {predictor.view_names}", what=None
            )
        if c not in expected:
            raise InputError((c,), f"column {c!r}: the model's view {view!r} has no feature of that name", what=None)
        t = dtypes.get(c)
        if t is not None and not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t)):
            raise InputError((c,), f"column {c!r} has type {t}, not a number", what=None)


class TableWriter:
    """Streams frames into one Parquet or CSV file, atomically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fmt = table_format(self.path, "output")
        self.file = AtomicFile(self.path)
        self.writer = None
        self.rows = 0

    def write(self, frame: pd.DataFrame | pa.Table) -> None:
        if self.fmt == "csv":
            frame = frame.to_pandas() if isinstance(frame, pa.Table) else frame
            frame.to_csv(self.file.tmp, mode="a", header=self.rows == 0, index=False)
        else:
            import pyarrow.parquet as pq

            table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.file.tmp, table.schema)
            self.writer.write_table(table)
        self.rows += len(frame)

    def close(self, ok: bool) -> None:
        if self.writer is not None:
            self.writer.close()
        if ok:
            if self.fmt == "parquet" and self.writer is None:  # an empty table still gets a valid file
                pd.DataFrame().to_parquet(self.file.tmp)
            self.file.commit()
        else:
            self.file.discard()


def _read_schema(path: Path, fmt: str) -> tuple[list[str], dict]:
    if fmt == "csv":
        head = pd.read_csv(path, nrows=1000)
        return list(head.columns), {
            c: pa.from_numpy_dtype(head[c].dtype) if head[c].dtype != object else pa.string() for c in head.columns
        }
    import pyarrow.dataset as pds

    schema = pds.dataset(str(path), format="parquet").schema
    return list(schema.names), {f.name: f.type for f in schema}


def _options(outputs, n_samples, level) -> dict:
    outputs = tuple(dict.fromkeys(["mean", *outputs]))
    return {"outputs": outputs, "n_samples": n_samples, "level": level}


def load_predictor(checkpoint: str | Path, device: str = "cpu", info: dict | None = None) -> tuple[Predictor, bytes]:
    """The predictor and its checkpoint's bytes (what the actors rebuild it from)."""
    path = checkpoint_file(checkpoint)
    predictor = Predictor.from_checkpoint(path, device=device, info=info or {"checkpoint": str(checkpoint)})
    return predictor, path.read_bytes()


def impute_table(
    input: str | Path,
    output: str | Path,
    *,
    checkpoint: str | Path,
    info: dict | None = None,
    id_column: str | None = None,
    outputs: Sequence[str] = ("mean",),
    n_samples: int = 100,
    level: float = 0.9,
    num_workers: int = 1,
    use_gpu: bool = False,
    num_cpus: float = 1.0,
    batch_size: int = BATCH_SIZE,
    engine: str = "ray",
) -> ImputeJobResult:
    """Impute a wide table into `output` (see the module docstring).

    `engine="ray"`: Ray Data reads the table, `num_workers` actors (one GPU each with `use_gpu`,
    else `num_cpus` CPUs each) impute its batches, the driver streams the results into the file in
    input order. `engine="local"`: the same predictor in this process, batch after batch."""
    t0 = time.perf_counter()
    input, output = Path(input), Path(output)
    if not input.exists():
        raise InputError(("input",), f"no such file or folder: {str(input)!r}", what=None)
    in_fmt = table_format(input, "input")
    table_format(output, "output")
    if engine not in ("ray", "local"):
        raise ValueError(f"engine must be 'ray' or 'local', got {engine!r}")
    options = _options(outputs, n_samples, level)
    device = "cuda" if use_gpu else "cpu"
    predictor, blob = load_predictor(checkpoint, "cpu", info)
    columns, dtypes = _read_schema(input, in_fmt)
    if id_column is None and in_fmt == "csv" and columns and columns[0].startswith("Unnamed: 0"):
        id_column = columns[0]  # a CSV written with its pandas index: that index is carried through as ids
    check_columns(predictor, columns, dtypes, id_column)
    writer = TableWriter(output)
    missing = 0
    ok = False
    try:
        if engine == "local":
            batches = _local_batches(input, in_fmt, batch_size)
            for frame in batches:
                missing += _n_missing(frame, predictor, id_column)
                writer.write(impute_frame(predictor, frame, id_column, **options))
        else:
            batches = _ray_batches(
                input, in_fmt, blob, device, id_column, options, num_workers, use_gpu, num_cpus, batch_size
            )
            try:
                for frame, n_miss in batches:
                    missing += n_miss
                    writer.write(frame)
            except Exception as err:
                cause = _user_error(err)
                if cause is None:
                    raise
                raise cause from None
            finally:
                batches.close()  # stops the Ray Data executor now, not when a traceback lets go of it
        ok = True
    finally:
        writer.close(ok)
    return ImputeJobResult(output, writer.rows, missing, time.perf_counter() - t0, dict(predictor.info))


def _user_error(err: BaseException) -> ValueError | None:
    """The `ValueError` a batch raised inside an actor (Ray wraps it in RayTaskError / UserCodeException,
    sometimes only as text: then its last `ValueError: ...` line)."""
    texts = []
    for _ in range(8):
        if err is None:
            break
        if isinstance(err, ValueError) and type(err).__module__.split(".")[0] != "ray":
            return err
        texts.append(str(err))
        err = getattr(err, "cause", None) or err.__cause__
    found = re.findall(r"^\s*(?:\w+\.)*(?:ValueError|InputError): (.+)$", "\n".join(texts), flags=re.M)
    return ValueError(found[-1].strip()) if found else None


def _n_missing(frame: pd.DataFrame, predictor: Predictor, id_column: str | None, per_row: bool = False):
    feats = [c for c in frame.columns if c != id_column]
    per = frame[feats].isna().to_numpy().sum(1) + (len(predictor.input_columns) - len(feats))
    return per if per_row else int(per.sum())


def _local_batches(path: Path, fmt: str, batch_size: int):
    if fmt == "csv":
        yield from pd.read_csv(path, chunksize=batch_size)
        return
    import pyarrow.dataset as pds

    for rb in pds.dataset(str(path), format="parquet").to_batches(batch_size=batch_size):
        yield rb.to_pandas()


def _ray_batches(path, fmt, blob, device, id_column, options, num_workers, use_gpu, num_cpus, batch_size):
    import ray

    ctx = ray.data.DataContext.get_current()
    before = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # rows leave in the order they came in
    try:
        yield from _ray_pipeline(
            ray, path, fmt, blob, device, id_column, options, num_workers, use_gpu, num_cpus, batch_size
        )
    finally:
        ctx.execution_options.preserve_order = before


def _ray_pipeline(ray, path, fmt, blob, device, id_column, options, num_workers, use_gpu, num_cpus, batch_size):
    ds = ray.data.read_csv(str(path)) if fmt == "csv" else ray.data.read_parquet(str(path))
    if fmt == "csv" and id_column is not None and id_column.startswith("Unnamed: 0") and id_column not in ds.columns():
        ds = ds.rename_columns({"": id_column})  # pyarrow names an empty header "", pandas "Unnamed: 0"
    resources = {"num_gpus": 1} if use_gpu else {"num_cpus": num_cpus}
    imputed = ds.map_batches(
        ImputeBatch,
        fn_constructor_kwargs={
            "checkpoint_ref": [ray.put(blob)],  # in a list: Ray hands the actor the reference, not the bytes
            "device": device,
            "id_column": id_column,
            "options": options,
        },
        batch_size=batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=max(1, num_workers)),
        **resources,
    )
    import pyarrow.compute as pc

    tables = imputed.iter_batches(batch_size=None, batch_format="pyarrow")
    try:
        for table in tables:
            if _ERROR in table.column_names:
                errors = [e for e in table.column(_ERROR).to_pylist() if e]
                if errors:
                    raise ValueError(errors[0])
                table = table.drop_columns([_ERROR])
            n = pc.sum(table.column(_MISSING)).as_py() or 0
            yield table.drop_columns([_MISSING]), int(n)
    finally:
        getattr(tables, "close", lambda: None)()


__all__ = [
    "ImputeBatch",
    "ImputeJobResult",
    "TableWriter",
    "check_columns",
    "impute_frame",
    "impute_table",
    "load_predictor",
]
