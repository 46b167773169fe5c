"""Dataset specs: where a multi-view data set lives on disk and how each view is modelled.

Three layouts, written in YAML:

```yaml
# one table per view, keyed by a sample-id column; a sample absent from a view's table
# has that whole view missing
id_column: sample_id
views:
  rna:     {path: rna.parquet, likelihood: gaussian}          # all non-id columns
  protein: {path: protein/, columns: [CD4, CD8], scaling: standard}
  counts:  {path: counts.csv, likelihood: negative_binomial}

# or one wide table, views picked by column lists or name prefixes
id_column: sample_id
table: wide.parquet
views:
  top:    {prefix: "top_"}
  bottom: {columns: [b0, b1, b2]}

# per-view AnnData files: obs_names are the sample ids, var_names the columns, values from X
# (dense or sparse) or from the named layer; mixes with parquet / csv views
id_column: sample_id
views:
  rna:     {path: rna.h5ad, layer: counts, likelihood: negative_binomial}
  protein: {path: protein.h5ad, columns: [CD4, CD8]}
  clin:    {path: clinical.parquet}

# or one MuData file, views keyed by modality name; a sample absent from a modality's
# obs_names has that view missing
id_column: sample_id
mudata: pbmc.h5mu
views:
  rna:  {layer: counts, likelihood: negative_binomial}
  prot: {columns: [CD4, CD8], scaling: standard}
```

Paths are files, directories of files, or globs, relative to the spec file (a `.h5ad` view and
a `mudata:` source are one file each). `format` is `parquet`, `csv` or `h5ad` (inferred from the
file suffix when left out). `.h5ad` / `.h5mu` need the `omics` extra
(`pip install 'mvimpute[omics]'`). `validate_spec` checks the files themselves (they exist, hold
the id column, every named column, layer and modality) so that a bad spec is a `ValueError`
naming the problem before any training starts.
"""

from __future__ import annotations

import glob as globlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..likelihoods import LIKELIHOODS, RAW_LIKELIHOODS
from . import omics
from .multiview import COLUMN_SEP, SCALINGS

FORMATS = ("parquet", "csv", "h5ad")
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".gz": "csv", ".h5ad": "h5ad"}
COUNT_LIKELIHOODS = RAW_LIKELIHOODS  # likelihoods of raw values: scaling must be "none"


class ViewSpec(BaseModel):
    """One view: its own table or AnnData (`path`), a slice of the wide table (`columns` / `prefix`),
    or a MuData modality. `layer` reads an AnnData layer instead of X."""

    model_config = ConfigDict(extra="forbid")

    path: str | list[str] | None = None
    format: Literal["parquet", "csv", "h5ad"] | None = None
    layer: str | None = None
    columns: list[str] | None = None
    prefix: str | None = None
    likelihood: Literal["binary", "bounded", "bernoulli", "gaussian", "poisson", "negative_binomial"] | None = None
    scaling: Literal["standard", "none", "log1p"] | None = None

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("the view has no columns (empty column list)")
            dup = sorted({c for c in v if v.count(c) > 1})
            if dup:
                raise ValueError(f"duplicate column(s) {dup}")
        return v

    @model_validator(mode="after")
    def _choices(self) -> ViewSpec:
        if self.columns is not None and self.prefix is not None:
            raise ValueError("give either columns or prefix, not both")
        if self.layer is not None and self.format in ("parquet", "csv"):
            raise ValueError(f"layer {self.layer!r} is for AnnData views (h5ad, mudata), not {self.format}")
        if self.scaling not in (None, "none") and self.likelihood in COUNT_LIKELIHOODS:
            raise ValueError(
                f"scaling {self.scaling!r} does not fit likelihood {self.likelihood!r}, which models raw values; "
                "use scaling 'none' or a gaussian likelihood"
            )
        return self


class DatasetSpec(BaseModel):
    """A multi-view data set on disk. `base_dir` is where relative paths resolve (the spec's folder)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    id_column: str = "sample_id"
    table: str | list[str] | None = None
    mudata: str | None = None
    format: Literal["parquet", "csv", "h5ad"] | None = None
    views: dict[str, ViewSpec] = Field(min_length=1)
    base_dir: str | None = None

    @field_validator("views")
    @classmethod
    def _view_names(cls, views: dict[str, ViewSpec]) -> dict[str, ViewSpec]:
        for v in views:
            if not v or COLUMN_SEP in v:
                raise ValueError(f"view name {v!r} must be a non-empty string without {COLUMN_SEP!r}")
        return views

    @model_validator(mode="after")
    def _layout(self) -> DatasetSpec:
        if self.mudata is not None:
            if self.table is not None:
                raise ValueError("give either table or mudata, not both")
            for v, vs in self.views.items():
                if vs.path is not None or vs.format is not None:
                    raise ValueError(
                        f"view {v!r}: a mudata spec reads the modality named like the view; give no path or format"
                    )
        elif self.table is not None:
            for v, vs in self.views.items():
                if vs.path is not None:
                    raise ValueError(
                        f"view {v!r}: a wide-table spec (table:) takes columns or prefix per view, not path"
                    )
                if vs.columns is None and vs.prefix is None:
                    raise ValueError(f"view {v!r}: a wide-table spec needs columns or prefix for every view")
                if vs.layer is not None:
                    raise ValueError(f"view {v!r}: layer is for AnnData views (h5ad, mudata), not a wide table")
        else:
            for v, vs in self.views.items():
                if vs.path is None:
                    raise ValueError(
                        f"view {v!r}: give a path per view, a wide table with table:, or a MuData file with mudata:"
                    )
        return self

    @property
    def layout(self) -> str:
        if self.mudata is not None:
            return "mudata"
        return "wide" if self.table is not None else "per_view"

    @property
    def likelihoods(self) -> dict[str, str]:
        return {v: vs.likelihood for v, vs in self.views.items() if vs.likelihood}

    @property
    def scalings(self) -> dict[str, str]:
        return {v: vs.scaling for v, vs in self.views.items() if vs.scaling}


def _pydantic_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def load_spec(spec: str | Path | Mapping | DatasetSpec) -> DatasetSpec:
    """Read and validate a spec (YAML file, dict or `DatasetSpec`); a bad one is a `ValueError`."""
    if isinstance(spec, DatasetSpec):
        return spec
    base = None
    if isinstance(spec, str | Path):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"dataset spec {str(spec)!r}: no such file")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"dataset spec {str(spec)!r} is not valid YAML: {err}") from None
        base = str(path.resolve().parent)
        where = str(spec)
    else:
        raw, where = dict(spec), "dataset spec"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping with id_column and views, got {type(raw).__name__}")
    raw = dict(raw)
    if base is not None and not raw.get("base_dir"):
        raw["base_dir"] = base
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as err:
        raise ValueError(f"{where}: {_pydantic_message(err)}") from None


# ----------------------------------------------------------------------------- resolving against the files


@dataclass
class ViewSource:
    """A view resolved against its files: where to read it and which columns it has."""

    name: str
    files: list[str]
    format: str
    columns: list[str]
    likelihood: str | None
    scaling: str | None
    anndata: omics.AnnDataSource | None = None


@dataclass
class ResolvedSpec:
    spec: DatasetSpec
    id_column: str
    views: dict[str, ViewSource]
    table_files: list[str] | None = None
    table_format: str | None = None
    mudata_file: str | None = None

    @property
    def columns(self) -> dict[str, list[str]]:
        return {v: s.columns for v, s in self.views.items()}


def _is_uri(p: str) -> bool:
    return "://" in p


def _format_of(files: list[str], given: str | None, what: str) -> str:
    if given:
        return given
    suffixes = {_SUFFIXES.get(Path(f).suffix.lower()) for f in files}
    if len(suffixes) != 1 or None in suffixes:
        hint = "; a .h5mu file is given as mudata: at the top level" if any(f.endswith(".h5mu") for f in files) else ""
        raise ValueError(f"{what}: cannot tell the format from {files[:3]}; set format: parquet, csv or h5ad{hint}")
    return suffixes.pop()


def _files(paths: str | list[str], base_dir: str | None, fmt: str | None, what: str) -> list[str]:
    out: list[str] = []
    for p in [paths] if isinstance(paths, str) else list(paths):
        if _is_uri(p):
            out += _uri_files(p, fmt, what)
            continue
        full = Path(p) if Path(p).is_absolute() or base_dir is None else Path(base_dir) / p
        if any(ch in p for ch in "*?["):
            hits = sorted(globlib.glob(str(full)))
            if not hits:
                raise ValueError(f"{what}: no file matches {p!r}")
            out += hits
        elif full.is_dir():
            wanted = {k for k, f in _SUFFIXES.items() if fmt is None or f == fmt}
            hits = sorted(str(f) for f in full.iterdir() if f.is_file() and f.suffix.lower() in wanted)
            if not hits:
                raise ValueError(f"{what}: directory {p!r} holds no {fmt or 'parquet/csv/h5ad'} file")
            out += hits
        elif full.is_file():
            out.append(str(full))
        else:
            raise ValueError(f"{what}: no such file or directory {p!r}")
    return out


def _numeric(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)


def _uri_files(uri: str, fmt: str | None, what: str) -> list[str]:
    """A URI's file, or the table files under a URI folder (prefix), checked now: a missing object or
    bucket, or a server that cannot be reached, is a `ValueError` naming the URI before any worker starts."""
    import pyarrow.fs as pafs

    from .. import storage

    fs, inner = storage.filesystem(uri)
    scheme = uri.split("://", 1)[0]
    try:
        info = fs.get_file_info(inner.rstrip("/"))
        if info.type == pafs.FileType.File:
            return [uri]
        if info.type == pafs.FileType.Directory:
            wanted = {k for k, f in _SUFFIXES.items() if fmt is None or f == fmt}
            found = fs.get_file_info(pafs.FileSelector(inner.rstrip("/")))
            hits = sorted(
                f"{scheme}://{i.path}" for i in found
                if i.type == pafs.FileType.File and Path(i.path).suffix.lower() in wanted
            )  # fmt: skip
            if hits:
                return hits
            raise ValueError(f"{what}: {uri!r} holds no {fmt or 'parquet/csv/h5ad'} file")
    except OSError as err:
        raise ValueError(f"{what}: cannot reach {uri!r}: {err}") from None
    raise ValueError(f"{what}: no such object or folder {uri!r}")


def _local_only(path: str, what: str) -> None:
    if _is_uri(path):
        raise ValueError(
            f"{what}: {path!r}: AnnData/MuData files are read from a local disk only (their reader needs a "
            "file, not an object store); copy the file to the machine first"
        )


def read_file_schema(path: str, fmt: str, what: str):
    """The Arrow schema of one file (for CSV: inferred from its first block); unreadable is a `ValueError`."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            return pq.read_schema(path)
        with pcsv.open_csv(path) as reader:
            return reader.schema
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"{what}: cannot read {path!r} as {fmt}: {err}") from None


def _pick_columns(names: list[str], vs: ViewSpec, exclude: set[str], what: str, source: str) -> list[str]:
    if vs.columns is not None:
        have = set(names)
        unknown = [c for c in vs.columns if c not in have]
        if unknown:
            raise ValueError(f"{what}: unknown column(s) {unknown[:5]} (not in {source}, which has {names[:8]}...)")
        return list(vs.columns)
    cols = [c for c in names if c not in exclude and (vs.prefix is None or c.startswith(vs.prefix))]
    if not cols:
        how = f"no column starts with prefix {vs.prefix!r}" if vs.prefix is not None else "only the id column"
        raise ValueError(f"{what} has no columns: {source} has {how}")
    return cols


def validate_spec(spec: str | Path | Mapping | DatasetSpec) -> ResolvedSpec:
    """Resolve a spec against its files: every file readable, id column and named columns present,
    every view with at least one numeric column; for AnnData views the modality, layer and var names
    present and the obs names unique. Reads only file metadata (CSV headers, AnnData obs/var indices)."""
    spec = load_spec(spec)
    idc = spec.id_column
    views: dict[str, ViewSource] = {}
    if spec.layout == "mudata":
        return _validate_mudata(spec)
    if spec.layout == "wide":
        files = _files(spec.table, spec.base_dir, spec.format, "table")
        fmt = _format_of(files, spec.format, "table")
        if fmt not in ("parquet", "csv"):
            raise ValueError(f"table: a wide table is parquet or csv, not {fmt}; give h5ad files as per-view paths")
        schema = read_file_schema(files[0], fmt, "table")
        names = list(schema.names)
        if idc not in names:
            raise ValueError(f"table: id column {idc!r} not in {files[0]!r} (columns {names[:8]}...)")
        taken: dict[str, str] = {}
        for v, vs in spec.views.items():
            cols = _pick_columns(names, vs, {idc}, f"view {v!r}", repr(files[0]))
            for c in cols:
                if c in taken:
                    raise ValueError(f"view {v!r}: column {c!r} is already in view {taken[c]!r}")
                taken[c] = v
            _check_numeric(schema, cols, f"view {v!r}", files[0])
            views[v] = ViewSource(v, files, fmt, cols, vs.likelihood, vs.scaling)
        return ResolvedSpec(spec, idc, views, files, fmt)
    for v, vs in spec.views.items():
        what = f"view {v!r}"
        files = _files(vs.path, spec.base_dir, vs.format or spec.format, what)
        fmt = _format_of(files, vs.format or spec.format, what)
        if fmt == "h5ad":
            if len(files) != 1:
                raise ValueError(f"{what}: an h5ad view is one file, got {len(files)}: {files[:3]}")
            _local_only(files[0], what)
            src = omics.inspect(files[0], "", vs.layer, what, "h5ad")
            cols = _anndata_columns(src, vs, idc, what)
            views[v] = ViewSource(v, files, fmt, cols, vs.likelihood, vs.scaling, src)
            continue
        if vs.layer is not None:
            raise ValueError(f"{what}: layer {vs.layer!r} is for AnnData views (h5ad, mudata), not {fmt}")
        schema = read_file_schema(files[0], fmt, what)
        names = list(schema.names)
        if idc not in names:
            raise ValueError(f"{what}: id column {idc!r} not in {files[0]!r} (columns {names[:8]}...)")
        cols = _pick_columns(names, vs, {idc}, what, repr(files[0]))
        _check_numeric(schema, cols, what, files[0])
        views[v] = ViewSource(v, files, fmt, cols, vs.likelihood, vs.scaling)
    return ResolvedSpec(spec, idc, views)


def _anndata_columns(src: omics.AnnDataSource, vs: ViewSpec, idc: str, what: str) -> list[str]:
    """The var names a view takes from an AnnData (all, a list, or a prefix)."""
    source = f"the var_names of {src.path!r}" + (f" ({src.group})" if src.group else "")
    if not src.var_names:
        raise ValueError(f"{what} has no columns: {source} are empty")
    cols = _pick_columns(src.var_names, vs, set(), what, source)
    dup = sorted(c for c, k in Counter(cols).items() if k > 1)
    if dup:
        raise ValueError(f"{what}: duplicate var name(s) {dup[:5]} in {source}; select unique ones with columns:")
    if idc in cols:
        raise ValueError(f"{what}: var name {idc!r} is also the id column; set id_column to another name")
    return cols


def _validate_mudata(spec: DatasetSpec) -> ResolvedSpec:
    files = _files(spec.mudata, spec.base_dir, None, "mudata")
    if len(files) != 1:
        raise ValueError(f"mudata: one .h5mu file, got {len(files)}: {files[:3]}")
    path = files[0]
    _local_only(path, "mudata")
    mods = omics.modalities(path, "mudata")
    views: dict[str, ViewSource] = {}
    for v, vs in spec.views.items():
        what = f"view {v!r}"
        if v not in mods:
            raise ValueError(f"{what}: no modality {v!r} in {path!r} (modalities: {mods})")
        src = omics.inspect(path, f"mod/{v}", vs.layer, what, "h5mu")
        cols = _anndata_columns(src, vs, spec.id_column, what)
        views[v] = ViewSource(v, files, "h5mu", cols, vs.likelihood, vs.scaling, src)
    return ResolvedSpec(spec, spec.id_column, views, mudata_file=path)


def _check_numeric(schema, cols: list[str], what: str, path: str) -> None:
    for c in cols:
        t = schema.field(c).type
        if not _numeric(t):
            raise ValueError(f"{what}, column {c!r}: type {t} in {path!r} is not numeric")


__all__ = [
    "FORMATS",
    "LIKELIHOODS",
    "SCALINGS",
    "DatasetSpec",
    "ResolvedSpec",
    "ViewSource",
    "ViewSpec",
    "load_spec",
    "validate_spec",
]
