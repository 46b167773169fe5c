"""AnnData (.h5ad) and MuData (.h5mu) views, read streamed with Ray Data.

A view is one AnnData: `obs_names` are the sample ids, `var_names` its columns, the values its
`X` or one of its `layers` (dense or sparse; a sparse zero is an observed zero, NaN is missing).
A `.h5ad` file holds one AnnData at its root, a `.h5mu` file one per modality under `mod/<name>`.

Rows are read a range at a time with h5py and anndata's element readers (`sparse_dataset`,
`read_elem`) rather than `anndata.read_h5ad(backed="r")`, which loads the whole obs and var
tables and every layer on each open; only the rows of one range are densified. Needs the
`omics` extra: `pip install 'mvimpute[omics]'`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INSTALL_HINT = "pip install 'mvimpute[omics]'"
CHUNK_VALUES = 1 << 21  # stored values per row range (rows x stored columns): ~16 MB as float64


def _anndata_io():
    """(read_elem, sparse_dataset, h5py), or an ImportError saying how to install them."""
    try:
        import h5py

        try:
            from anndata.io import read_elem, sparse_dataset
        except ImportError:  # anndata < 0.11
            from anndata.experimental import read_elem, sparse_dataset
    except ImportError as err:
        raise ImportError(f"reading .h5ad / .h5mu files needs anndata and mudata: {INSTALL_HINT}") from err
    return read_elem, sparse_dataset, h5py


@dataclass
class AnnDataSource:
    """One AnnData inside an HDF5 file: `group` is "" for a .h5ad root, `mod/<name>` for a .h5mu modality."""

    path: str
    group: str
    layer: str | None
    n_obs: int
    var_names: list[str]


def _open(path: str, what: str, kind: str):
    _, _, h5py = _anndata_io()
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{what}: cannot read {path!r} as {kind}: {err}") from None


def _index(read_elem, frame) -> np.ndarray:
    """The index (obs_names / var_names) of an encoded dataframe group, as strings."""
    return np.asarray(read_elem(frame[frame.attrs["_index"]])).astype(str)


def modalities(path: str, what: str = "mudata") -> list[str]:
    """The modality names of a .h5mu file, in its stored order."""
    with _open(path, what, "h5mu") as f:
        if "mod" not in f:
            raise ValueError(f"{what}: {path!r} is not a MuData file (no 'mod' group)")
        order = f["mod"].attrs.get("mod-order")
        names = list(f["mod"].keys())
        if order is not None:
            order = [o.decode() if isinstance(o, bytes) else str(o) for o in order]
            names = [m for m in order if m in names] + [m for m in names if m not in order]
        return names


def _matrix(g, layer: str | None, what: str, where: str):
    if layer is not None:
        layers = list(g["layers"].keys()) if "layers" in g else []
        if layer not in layers:
            raise ValueError(f"{what}: no layer {layer!r} in {where} (layers: {layers})")
        return g["layers"][layer]
    if "X" not in g:
        raise ValueError(f"{what}: {where} has no X; name one of its layers with layer:")
    return g["X"]


def _shape_dtype(m, sparse_dataset, h5py) -> tuple[tuple[int, int], np.dtype]:
    if isinstance(m, h5py.Dataset):
        return tuple(m.shape), m.dtype
    s = sparse_dataset(m)
    return tuple(s.shape), s.dtype


def inspect(path: str, group: str, layer: str | None, what: str, kind: str = "h5ad") -> AnnDataSource:
    """Check an AnnData (shape, layer, numeric values, unique obs names) and read its var names.

    Reads the obs and var indices and the matrix's metadata only; any problem is a `ValueError`
    naming `what`."""
    read_elem, sparse_dataset, h5py = _anndata_io()
    where = f"{path!r}" + (f" ({group})" if group else "")
    with _open(path, what, kind) as f:
        g = f[group] if group else f
        if "obs" not in g or "var" not in g:
            raise ValueError(f"{what}: {where} is not an AnnData (no obs / var)")
        try:
            obs, var = _index(read_elem, g["obs"]), _index(read_elem, g["var"])
            m = _matrix(g, layer, what, where)
            shape, dtype = _shape_dtype(m, sparse_dataset, h5py)
        except ValueError:
            raise
        except Exception as err:
            raise ValueError(f"{what}: cannot read {where} as AnnData: {err}") from None
    name = f"layer {layer!r}" if layer else "X"
    if len(shape) != 2 or shape != (len(obs), len(var)):
        raise ValueError(f"{what}: {name} in {where} has shape {shape}, not (n_obs, n_vars) = {(len(obs), len(var))}")
    if np.dtype(dtype).kind not in "biuf":
        raise ValueError(f"{what}: {name} in {where} has dtype {dtype}, not numeric")
    if len(obs) == 0:
        raise ValueError(f"{what}: {where} has no samples (obs)")
    names, counts = np.unique(obs, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{what}: duplicate obs name(s) {names[counts > 1][:5].tolist()} in {where}")
    return AnnDataSource(path, group, layer, len(obs), var.tolist())


def read_rows(
    source: AnnDataSource, start: int, stop: int, columns: list[str], id_column: str, index: np.ndarray | None = None
):
    """Rows [start, stop) as a pyarrow table: `id_column` (obs names) and one float64 column per name."""
    import pyarrow as pa

    read_elem, sparse_dataset, h5py = _anndata_io()
    if index is None:
        pos = {n: i for i, n in enumerate(source.var_names)}
        index = np.array([pos[c] for c in columns], dtype=np.int64)
    with h5py.File(source.path, "r") as f:
        g = f[source.group] if source.group else f
        m = g["layers"][source.layer] if source.layer else g["X"]
        if isinstance(m, h5py.Dataset):
            x = np.asarray(m[start:stop])[:, index]
        else:
            x = sparse_dataset(m)[start:stop][:, index].toarray()
        ids = g["obs"][g["obs"].attrs["_index"]]
        if isinstance(ids, h5py.Dataset) and h5py.check_string_dtype(ids.dtype) is not None:
            ids = ids.asstr()[start:stop]
        else:
            ids = _index(read_elem, g["obs"])[start:stop]
    x = np.asarray(x, dtype=np.float64)
    arrays = [pa.array(np.asarray(ids).astype(str).tolist(), type=pa.string())]
    arrays += [pa.array(x[:, j]) for j in range(x.shape[1])]
    return pa.Table.from_arrays(arrays, names=[id_column, *columns])


class _ReadRanges:
    """Batch of {start, stop} rows → the AnnData rows of those ranges."""

    def __init__(self, source: AnnDataSource, columns: list[str], id_column: str) -> None:
        self.source, self.columns, self.id_column = source, columns, id_column
        pos = {n: i for i, n in enumerate(source.var_names)}
        self.index = np.array([pos[c] for c in columns], dtype=np.int64)

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        parts = [
            read_rows(self.source, int(a), int(b), self.columns, self.id_column, self.index)
            for a, b in zip(batch["start"], batch["stop"], strict=True)
        ]
        return pa.concat_tables(parts)


def row_ranges(n_obs: int, n_stored: int, chunk_values: int | None = None) -> list[dict[str, int]]:
    """Contiguous row ranges of about `chunk_values` stored values each."""
    rows = max(1, (chunk_values or CHUNK_VALUES) // max(1, n_stored))
    return [{"start": a, "stop": min(a + rows, n_obs)} for a in range(0, n_obs, rows)]


def read_view(source: AnnDataSource, columns: list[str], id_column: str, chunk_values: int | None = None):
    """A Ray Dataset of one AnnData view: `id_column` (string) + float64 `columns`, one row range per task."""
    import ray.data

    ranges = row_ranges(source.n_obs, len(source.var_names), chunk_values)
    ds = ray.data.from_items(ranges, override_num_blocks=min(len(ranges), 200))
    fn = _ReadRanges(source, columns, id_column)
    return ds.map_batches(fn, batch_size=1, batch_format="numpy")


__all__ = ["INSTALL_HINT", "AnnDataSource", "inspect", "modalities", "read_rows", "read_view", "row_ranges"]
