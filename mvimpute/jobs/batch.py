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

Beside it, `<output stem>.monitoring.json` (in a parts folder: `_monitoring.json`) holds the monitoring
summary the endpoint serves at `GET /monitoring` (`mvimpute.monitoring`), for the table's first
`monitor_rows` rows: input drift against training and calibration on observed entries hidden again.

The checkpoint is read once by the driver and shipped to the actors through the object store, so
every actor serves the same model and no actor needs the registry or a shared file system.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import storage
from ..checkpoint import checkpoint_file
from ..data.multiview import COLUMN_SEP
from ..files import AtomicFile
from ..predictor import InputError, Predictor

_MISSING = "__mvimpute_missing__"
MONITOR_ROWS = 1000  # the table's first rows its monitoring summary covers (scoring draws 100 per row)
_ERROR = "__mvimpute_error__"  # per-row count of filled entries, dropped by the driver
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
BATCH_SIZE = 4096


def table_format(path: str | Path, role: str) -> str:
    """ "parquet" or "csv" for a file; an input without a table suffix is a Parquet folder (or prefix),
    an output without one a folder of Parquet parts ("parts")."""
    suffix = Path(str(path).rstrip("/")).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is not None:
        return fmt
    if suffix:
        raise InputError(
            (role,), f"{str(path)!r}: use a file ending in one of {sorted(FORMATS)}, or a folder", what=None
        )
    return "parquet" if role == "input" else "parts"


@dataclass
class ImputeJobResult:
    output: Path
    rows: int
    missing_filled: int
    seconds: float
    model: dict
    parts_by_node: dict = field(default_factory=dict)  # into parts with Ray: node id → parts it wrote
    monitoring: dict | None = None  # the monitoring summary of the table's first rows (`monitor_rows`)
    monitoring_path: str | None = None


class ImputeBatch:
    """The Ray Data actor: rebuilds the predictor from the checkpoint bytes once, then imputes batches.

    Into a file, it hands the imputed batch back (the driver writes it). Into a folder (`parts`, a
    staging folder or URI), the batch carries the input's row index in `ROW`, the actor writes it as
    a Parquet part named by its first row and hands back one line about it (or the error)."""

    def __init__(
        self, checkpoint_ref, device: str, id_column: str | None, options: dict, parts: str | None = None
    ) -> None:
        import ray

        blob = ray.get(checkpoint_ref[0]) if isinstance(checkpoint_ref, list) else checkpoint_ref
        fd, path = tempfile.mkstemp(suffix=".pt")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        try:
            self.predictor = Predictor.from_checkpoint(path, device=device)
        finally:
            os.unlink(path)
        self.id_column, self.options, self.parts = id_column, options, parts

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        if self.parts is not None:
            return pa.Table.from_pandas(write_part(self.predictor, batch, self.id_column, self.options, self.parts))
        try:
            out = impute_frame(self.predictor, batch, self.id_column, **self.options)
        except ValueError as err:
            # handed to the driver as data: it stops the run cleanly (a raising actor can be left holding its CPU)
            return pa.table({_ERROR: [str(err)]})
        out[_MISSING] = _n_missing(batch, self.predictor, self.id_column, per_row=True)
        # an Arrow table, so draws stay list<double> columns (Ray would turn arrays into tensor columns)
        return pa.Table.from_pandas(out, preserve_index=False)


def write_part(predictor: Predictor, batch: pd.DataFrame, id_column: str | None, options: dict, parts: str):
    """One batch (with its `ROW` column) imputed and written to `parts/<first row>.parquet`, rows in
    order; returns one line: the part, its first and last row, rows and entries filled, the Ray node."""
    import pyarrow.parquet as pq

    batch = batch.sort_values(ROW, kind="stable")
    rows = batch.pop(ROW).to_numpy()
    if not len(rows):
        return pd.DataFrame({"part": [], "first": [], "last": [], "rows": [], "missing": [], "error": [], "node": []})
    try:
        out = impute_frame(predictor, batch.reset_index(drop=True), id_column, **options)
    except ValueError as err:
        # handed to the driver as data: it stops the job cleanly (a raising actor can be left holding its CPU)
        return pd.DataFrame({"part": [""], "first": [int(rows[0])], "last": [int(rows[-1])], "rows": [0],
                             "missing": [0], "error": [str(err)], "node": [_node_id()]})  # fmt: skip
    out[ROW] = rows
    name = f"{int(rows[0]):012d}.parquet"
    if not storage.is_uri(parts):  # a local (or shared) disk has folders; a bucket has none to make
        os.makedirs(parts, exist_ok=True)
    fs, inner = storage.filesystem(storage.join(parts, name))
    pq.write_table(pa.Table.from_pandas(out, preserve_index=False), inner, filesystem=fs)
    missing = int(_n_missing(batch, predictor, id_column))
    return pd.DataFrame({"part": [name], "first": [int(rows[0])], "last": [int(rows[-1])], "rows": [len(rows)],
                         "missing": [missing], "error": [""], "node": [_node_id()]})  # fmt: skip


def _node_id() -> str:
    """The Ray node this runs on ("" outside Ray): each part's line says where it was imputed."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


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


def _read_schema(path: str, fmt: str) -> tuple[list[str], dict]:
    if fmt == "csv":
        fs, inner = storage.filesystem(path)
        with fs.open_input_stream(inner) as f:
            head = pd.read_csv(f, nrows=1000)
        return list(head.columns), {
            c: pa.from_numpy_dtype(head[c].dtype) if head[c].dtype != object else pa.string() for c in head.columns
        }
    schema = _parquet(path).schema
    return list(schema.names), {f.name: f.type for f in schema}


def _parquet(path: str):
    import pyarrow.dataset as pds

    fs, inner = storage.filesystem(path)
    return pds.dataset(inner, format="parquet", filesystem=fs)


def _options(outputs, n_samples, level) -> dict:
    outputs = tuple(dict.fromkeys(["mean", *outputs]))
    return {"outputs": outputs, "n_samples": n_samples, "level": level}


def load_predictor(checkpoint: str | Path, device: str = "cpu", info: dict | None = None) -> tuple[Predictor, bytes]:
    """The predictor and its checkpoint's bytes (what the actors rebuild it from)."""
    path = checkpoint_file(checkpoint)
    predictor = Predictor.from_checkpoint(path, device=device, info=info or {"checkpoint": str(checkpoint)})
    return predictor, path.read_bytes()


@dataclass(frozen=True)
class BatchPlan:
    """One batch job, checked: where the table comes from and goes, the model's bytes, the outputs
    asked for and the actors' resources."""

    input: str
    in_fmt: str
    output: str
    out_fmt: str
    blob: bytes
    id_column: str | None
    options: dict
    num_workers: int = 1
    use_gpu: bool = False
    num_cpus: float = 1.0
    batch_size: int = BATCH_SIZE

    @property
    def device(self) -> str:
        return "cuda" if self.use_gpu else "cpu"


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
    monitor_rows: int = MONITOR_ROWS,
) -> ImputeJobResult:
    """Impute a wide table into `output` (see the module docstring).

    `engine="ray"`: Ray Data reads the table, `num_workers` actors (one GPU each with `use_gpu`,
    else `num_cpus` CPUs each) impute its batches; into a file, the driver streams the results in
    input order; into a folder (no table suffix; a URI must be one), the actors write Parquet parts
    themselves and the driver publishes them (`publish_parts`). `engine="local"`: the same predictor
    in this process, batch after batch. `monitor_rows`: rows the monitoring summary covers (0: none)."""
    t0 = time.perf_counter()
    input, output = str(input), str(output)
    in_fmt, out_fmt = table_format(input, "input"), table_format(output, "output")
    if engine not in ("ray", "local"):
        raise ValueError(f"engine must be 'ray' or 'local', got {engine!r}")
    if not storage.exists(input):
        raise InputError(("input",), f"no such file or folder: {input!r}", what=None)
    if out_fmt == "parts":
        check_parts_target(output)
    elif storage.is_uri(output):
        raise InputError(("output",), f"{output!r}: a URI output is a folder of Parquet parts (no suffix)", what=None)
    predictor, blob = load_predictor(checkpoint, "cpu", info)
    columns, dtypes = _read_schema(input, in_fmt)
    if id_column is None and in_fmt == "csv" and columns and columns[0].startswith("Unnamed: 0"):
        id_column = columns[0]  # a CSV written with its pandas index: that index is carried through as ids
    check_columns(predictor, columns, dtypes, id_column)
    plan = BatchPlan(input, in_fmt, output, out_fmt, blob, id_column, _options(outputs, n_samples, level),
                     num_workers, use_gpu, num_cpus, batch_size)  # fmt: skip
    run = _impute_into_parts if out_fmt == "parts" else _impute_into_file
    rows, missing, nodes = run(plan, predictor, engine)
    target = output if storage.is_uri(output) else Path(output)
    result = ImputeJobResult(target, rows, missing, time.perf_counter() - t0, dict(predictor.info), nodes)
    if monitor_rows > 0:
        result.monitoring, result.monitoring_path = write_monitoring(plan, predictor, monitor_rows)
    return result


def write_monitoring(plan: BatchPlan, predictor: Predictor, max_rows: int) -> tuple[dict, str]:
    """The monitoring summary of the input's first `max_rows` rows, written beside the output (JSON)."""
    from ..monitoring import table_summary

    frames, n = [], 0
    for frame in _local_batches(plan.input, plan.in_fmt, min(plan.batch_size, max_rows)):
        frames.append(frame.iloc[: max_rows - n])
        n += len(frames[-1])
        if n >= max_rows:
            break
    frame = pd.concat(frames, ignore_index=True)
    if plan.id_column is not None:
        frame = frame.drop(columns=[plan.id_column])
    summary = table_summary(predictor.imputer, predictor.check(frame), max_rows=max_rows)
    summary["model"] = {k: predictor.info[k] for k in ("name", "version", "alias", "run_id") if predictor.info.get(k)}
    summary["model"]["model"] = predictor.imputer.model_name
    summary["first_rows"] = summary.pop("rows")
    if plan.out_fmt == "parts":
        path = storage.join(plan.output, "_monitoring.json")  # "_": Parquet dataset readers skip it, as _SUCCESS
    else:
        stem = str(plan.output).rsplit(".", 1)[0]
        path = f"{stem}.monitoring.json"
    storage.write_text(path, json.dumps(summary, indent=1))
    return summary, path


def _impute_into_file(plan: BatchPlan, predictor: Predictor, engine: str) -> tuple[int, int, dict]:
    """One Parquet or CSV file, written by the driver in input order and renamed into place."""
    writer = TableWriter(plan.output)
    missing, ok = 0, False
    try:
        if engine == "local":
            for frame in _local_batches(plan.input, plan.in_fmt, plan.batch_size):
                missing += _n_missing(frame, predictor, plan.id_column)
                writer.write(impute_frame(predictor, frame, plan.id_column, **plan.options))
        else:
            batches = _ray_batches(plan)
            try:
                with _user_errors():
                    for frame, n_miss in batches:
                        missing += n_miss
                        writer.write(frame)
            finally:
                batches.close()  # stops the Ray Data executor now, not when a traceback lets go of it
        ok = True
    finally:
        writer.close(ok)
    return writer.rows, missing, {}


class _user_errors:
    """Raises the `ValueError` a batch raised inside an actor, unwrapped from Ray's exceptions."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if err is None or not isinstance(err, Exception) or isinstance(err, InputError):
            return False
        cause = _user_error(err)
        if cause is None or cause is err:
            return False
        raise cause from None


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


def _local_batches(path: str, fmt: str, batch_size: int):
    if fmt == "csv":
        fs, inner = storage.filesystem(path)
        with fs.open_input_stream(inner) as f:
            yield from pd.read_csv(f, chunksize=batch_size)
        return
    for rb in _parquet(path).to_batches(batch_size=batch_size):
        yield rb.to_pandas()


def _ray_read(plan: BatchPlan):
    """The input as a Ray Data set (a local path or a URI)."""
    import ray

    ds = ray.data.read_csv(plan.input) if plan.in_fmt == "csv" else ray.data.read_parquet(plan.input)
    id_column = plan.id_column
    if plan.in_fmt == "csv" and id_column is not None and id_column.startswith("Unnamed: 0"):
        if id_column not in ds.columns():
            ds = ds.rename_columns({"": id_column})  # pyarrow names an empty header "", pandas "Unnamed: 0"
    return ds


def _imputed(plan: BatchPlan, ds, parts: str | None = None):
    """`ds` through the actor pool of `ImputeBatch`es."""
    import ray

    resources = {"num_gpus": 1} if plan.use_gpu else {"num_cpus": plan.num_cpus}
    # Ray Data hands the pool whole blocks: a table read as one block (one Parquet row group) would go
    # to one actor. Cut into blocks of a batch each (streaming, in order), so every actor gets work;
    # strict: exactly a batch per block across the pieces' edges, so a part is a whole batch.
    ds = ds.repartition(target_num_rows_per_block=plan.batch_size, strict=True)
    return ds.map_batches(
        ImputeBatch,
        fn_constructor_kwargs={
            "checkpoint_ref": [ray.put(plan.blob)],  # in a list: Ray hands the actor the reference, not the bytes
            "device": plan.device,
            "id_column": plan.id_column,
            "options": plan.options,
            "parts": parts,
        },
        batch_size=plan.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=max(1, plan.num_workers)),
        **resources,
    )


class _preserve_order:
    """Ray Data keeps rows in the order they came in, while this block runs."""

    def __enter__(self):
        import ray

        self.ctx = ray.data.DataContext.get_current()
        self.before = self.ctx.execution_options.preserve_order
        self.ctx.execution_options.preserve_order = True

    def __exit__(self, *exc) -> None:
        self.ctx.execution_options.preserve_order = self.before


def _ray_batches(plan: BatchPlan):
    """(imputed table, entries filled) per batch, in input order, streamed to the driver."""
    import pyarrow.compute as pc

    with _preserve_order():
        tables = _imputed(plan, _ray_read(plan)).iter_batches(batch_size=None, batch_format="pyarrow")
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


# ----------------------------------------------------------------------------- a folder of parts

ROW = "__row__"  # the input's row number (from 0), kept in every part: the explicit order of the output
SUCCESS = "_SUCCESS"  # the manifest, written last: a folder without it holds no finished table


def check_parts_target(output: str) -> None:
    """A folder output must be new or empty: an `InputError` before any work starts otherwise."""
    import pyarrow.fs as pafs

    fs, inner = storage.filesystem(output)
    try:
        found = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    except OSError as err:
        raise InputError(("output",), f"{output!r}: {err}", what=None) from None
    if any(not i.base_name.startswith(("_", ".")) or i.base_name == SUCCESS for i in found):
        raise InputError(("output",), f"{output!r} already holds a table: give a new folder", what=None)


def _impute_into_parts(plan: BatchPlan, predictor: Predictor, engine: str) -> tuple[int, int, dict]:
    """Parts written beside the output (`_temporary/<job>/`, which readers skip), then published; on
    any failure the staged parts are removed and nothing appears at the output. Only one line per
    part reaches the driver."""
    staging = storage.join(plan.output, "_temporary", uuid.uuid4().hex[:12])
    try:
        if engine == "local":
            lines = _local_parts(plan, predictor, staging)
        else:
            _check_room(plan)
            with _user_errors(), _preserve_order():
                lines = _imputed(plan, _numbered(plan), staging).to_pandas()
        errors = [e for e in lines.get("error", pd.Series(dtype=str)) if e]
        if errors:
            raise ValueError(errors[0])
        rows = publish_parts(staging, plan.output)
    except BaseException:
        _remove(storage.join(plan.output, "_temporary"))
        raise
    nodes = lines["node"].value_counts().to_dict() if engine == "ray" and len(lines) else {}
    return rows, int(lines["missing"].sum()) if len(lines) else 0, {str(k): int(v) for k, v in nodes.items()}


def _check_room(plan: BatchPlan) -> None:
    """The actors write their parts through Ray Data's write tasks, which need a CPU beside them: a pool
    that holds every CPU would wait for ever. A `ValueError` naming the options, before anything runs."""
    from ..engine.runner import start_ray

    total = float(start_ray().get("CPU", 0.0))
    held = 0.0 if plan.use_gpu else plan.num_workers * plan.num_cpus
    if total - held < 1.0 - 1e-9:
        raise InputError(
            ("num_workers",),
            f"{plan.num_workers} actor(s) × {plan.num_cpus:g} CPU leave {max(total - held, 0):g} of {total:g} CPU(s) "
            "for Ray Data's read and write tasks (they need 1): use fewer actors or a fraction of a CPU each",
            what=None,
        )


def _pieces(plan: BatchPlan) -> list[dict]:
    """The input in pieces whose first row number is known before any row is read: each Parquet row
    group (row counts from the files' footers, files in the dataset's order), or a CSV file whole."""
    if plan.in_fmt == "csv":
        return [{"path": plan.input, "group": -1, "first": 0}]
    pieces, first = [], 0
    for fragment in _parquet(plan.input).get_fragments():
        meta = fragment.metadata
        for g in range(meta.num_row_groups):
            pieces.append({"path": fragment.path, "group": g, "first": first})
            first += meta.row_group(g).num_rows
    return pieces


def _read_pieces(batch: dict, input: str, id_column: str | None):
    """A Ray Data task: the rows of each piece (`_pieces`), with their row numbers in `ROW`."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fs = storage.filesystem(input)[0]

    def numbered(table: pa.Table, first: int) -> pa.Table:
        if id_column is not None and id_column.startswith("Unnamed: 0") and "" in table.column_names:
            table = table.rename_columns([id_column if c == "" else c for c in table.column_names])
        return table.append_column(ROW, pa.array(np.arange(first, first + table.num_rows, dtype=np.int64)))

    for path, group, first in zip(batch["path"], batch["group"], batch["first"], strict=True):
        first = int(first)
        if group < 0:  # a CSV file, streamed in Arrow's blocks
            with fs.open_input_stream(storage.filesystem(str(path))[1]) as f:
                for part in pacsv.open_csv(f):
                    yield numbered(pa.Table.from_batches([part]), first)
                    first += part.num_rows
        else:
            with fs.open_input_file(str(path)) as f:
                yield numbered(pq.ParquetFile(f).read_row_group(int(group)), first)


def _numbered(plan: BatchPlan):
    """The input as a Ray Data set with each row's number (from 0, in input order) in `ROW`, read in
    Ray Data tasks piece by piece (`_pieces`; only the footers are read here). Written here because
    Ray Data numbers no rows: zipping a range onto the read relies on an order Ray Data does not
    promise (and `Dataset.zip` leaves in Ray 2.64)."""
    import ray

    pieces = _pieces(plan)
    if not pieces:  # no rows: nothing to number
        return _ray_read(plan)
    ds = ray.data.from_items(pieces, override_num_blocks=len(pieces))
    return ds.map_batches(_read_pieces, fn_kwargs={"input": plan.input, "id_column": plan.id_column}, batch_size=1,
                          batch_format="numpy")  # fmt: skip


def _local_parts(plan: BatchPlan, predictor: Predictor, staging: str) -> pd.DataFrame:
    lines, start = [], 0
    for frame in _local_batches(plan.input, plan.in_fmt, plan.batch_size):
        frame = frame.reset_index(drop=True)
        frame[ROW] = np.arange(start, start + len(frame))
        start += len(frame)
        lines.append(write_part(predictor, frame, plan.id_column, plan.options, staging))
    return pd.concat(lines, ignore_index=True) if lines else pd.DataFrame({"missing": []})


def publish_parts(staging: str, output: str) -> int:
    """Move the staged parts to `output/part-NNNNN.parquet` in row order — read from their `__row__`
    column, not from how Ray named them — then write the `_SUCCESS` manifest (parts, rows), and
    remove the staging folder. Renames on a local disk; copies on an object store, where a reader
    must see `_SUCCESS` before it reads (a job stopped while publishing leaves parts but no manifest)."""
    import pyarrow.compute as pc
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, inner = storage.filesystem(staging)
    _, out = storage.filesystem(output)
    staged = [i.path for i in fs.get_file_info(pafs.FileSelector(inner)) if i.path.endswith(".parquet")]
    firsts, spans = {}, []
    for path in staged:
        rows = pq.read_table(path, columns=[ROW], filesystem=fs).column(ROW)
        if len(rows):
            firsts[path] = (int(pc.min(rows).as_py()), len(rows))
            spans.append((firsts[path][0], int(pc.max(rows).as_py()), path))
    spans.sort()
    for (_, last, a), (first, _, b) in zip(spans, spans[1:], strict=False):
        if first <= last:  # never publish a table whose parts, read in order, would not be in row order
            raise RuntimeError(f"staged parts {a!r} and {b!r} interleave rows: nothing published")
    parts = []
    for k, path in enumerate(sorted(firsts, key=lambda p: firsts[p][0])):
        name = f"part-{k:05d}.parquet"
        fs.move(path, f"{out}/{name}")
        parts.append({"file": name, "rows": firsts[path][1]})
    total = sum(p["rows"] for p in parts)
    manifest = {"format": "parquet", "rows": total, "row_column": ROW, "parts": parts}
    storage.write_text(storage.join(output, SUCCESS), json.dumps(manifest, indent=1))
    _remove(storage.join(output, "_temporary"))
    return total


def _remove(path: str) -> None:
    fs, inner = storage.filesystem(path)
    try:
        fs.delete_dir(inner)
    except (FileNotFoundError, OSError):
        pass


__all__ = [
    "ROW",
    "SUCCESS",
    "BatchPlan",
    "ImputeBatch",
    "ImputeJobResult",
    "TableWriter",
    "check_columns",
    "impute_frame",
    "impute_table",
    "load_predictor",
    "publish_parts",
    "write_part",
]
