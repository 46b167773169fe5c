"""AnnData (.h5ad) and MuData (.h5mu) dataset specs: validation, streamed reading, id alignment.

Three views with known values: `rna` sparse CSR counts, `prot` dense with a column subset,
`meth` read from a layer (its X is a decoy). Each view lacks some samples, and each file holds its
samples in its own order; the reference is built from the arrays with numpy.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ad = pytest.importorskip("anndata")
md = pytest.importorskip("mudata")
sp = pytest.importorskip("scipy.sparse")

from mvimpute.data import omics  # noqa: E402
from mvimpute.data.ray_data import read_spec  # noqa: E402
from mvimpute.data.spec import validate_spec  # noqa: E402

N = 30
IDS = np.array([f"s{i:02d}" for i in range(N)])


@pytest.fixture(scope="module")
def omics_data():
    """Full (N, d) arrays per view, which samples each view has, and the AnnData of each view."""
    rng = np.random.default_rng(0)
    full = {
        "rna": rng.poisson(0.7, size=(N, 5)).astype(float),  # mostly zeros: stored sparse
        "prot": rng.normal(size=(N, 3)),
        "meth": rng.uniform(size=(N, 4)),
    }
    full["rna"][7, 2] = np.nan  # a missing entry inside an observed view
    full["prot"][5, 1] = np.nan
    has = {"rna": np.arange(N) % 4 != 0, "prot": np.arange(N) % 3 != 1, "meth": np.arange(N) % 5 != 2}
    var = {"rna": [f"g{j}" for j in range(5)], "prot": ["p0", "p1", "p2"], "meth": [f"cg{j}" for j in range(4)]}
    adatas = {}
    for k, (v, a) in enumerate(full.items()):
        rows = rng.permutation(np.flatnonzero(has[v]))  # each file in its own sample order
        x = a[rows]
        obs, vr = pd.DataFrame(index=IDS[rows]), pd.DataFrame(index=var[v])
        if v == "rna":
            adata = ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=vr)
        elif v == "prot":
            adata = ad.AnnData(X=x.astype(np.float64), obs=obs, var=vr)
        else:
            adata = ad.AnnData(X=np.full_like(x, -1.0 - k), obs=obs, var=vr, layers={"beta": x})
        adatas[v] = adata
    return full, has, var, adatas


def _expected(omics_data, columns):
    """Ids of the samples with some view, and per view its selected columns with NaN rows where absent."""
    full, has, var, _ = omics_data
    keep = np.logical_or.reduce([has[v] for v in columns])
    out = {}
    for v, cols in columns.items():
        a = pd.DataFrame(full[v], columns=var[v])[cols].to_numpy().copy()
        a[~has[v]] = np.nan
        out[v] = a[keep]
    return IDS[keep], out


def _write(root: Path, name: str, spec: dict) -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def h5ad_dir(omics_data, tmp_path_factory):
    _, _, _, adatas = omics_data
    root = tmp_path_factory.mktemp("h5ad")
    for v, a in adatas.items():
        a.write_h5ad(root / f"{v}.h5ad")
    (root / "garbage.h5ad").write_bytes(b"not an hdf5 file")
    (root / "rna.h5mu").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def h5mu_dir(omics_data, tmp_path_factory):
    _, _, _, adatas = omics_data
    root = tmp_path_factory.mktemp("h5mu")
    with md.set_options(pull_on_update=False):
        md.MuData(dict(adatas)).write(root / "cells.h5mu")
    (root / "garbage.h5mu").write_bytes(b"not an hdf5 file")
    return root


H5AD_SPEC = {
    "name": "toy-h5ad",
    "id_column": "sample_id",
    "views": {
        "rna": {"path": "rna.h5ad", "likelihood": "negative_binomial"},
        "prot": {"path": "prot.h5ad", "columns": ["p2", "p0"]},
        "meth": {"path": "meth.h5ad", "layer": "beta"},
    },
}
COLUMNS = {"rna": [f"g{j}" for j in range(5)], "prot": ["p2", "p0"], "meth": [f"cg{j}" for j in range(4)]}


def _check(got, omics_data, columns=COLUMNS):
    ids, want = _expected(omics_data, columns)
    assert got.index.tolist() == sorted(ids.tolist())
    order = np.argsort(ids)
    assert {v: got.columns[v] for v in columns} == columns
    for v, a in want.items():
        np.testing.assert_array_equal(got.masks[v], ~np.isnan(a[order]), err_msg=v)
        np.testing.assert_allclose(got.views[v], a[order], equal_nan=True, rtol=0, atol=0, err_msg=v)


# ----------------------------------------------------------------------------- reading


def test_h5ad_views_sparse_dense_and_layer_align_on_obs_names(ray_session, omics_data, h5ad_dir, monkeypatch):
    monkeypatch.setattr(omics, "CHUNK_VALUES", 16)  # several row ranges per view: rows 3-5 per task
    resolved = validate_spec(_write(h5ad_dir, "spec.yaml", H5AD_SPEC))
    assert resolved.columns == COLUMNS
    assert {v: s.format for v, s in resolved.views.items()} == {"rna": "h5ad", "prot": "h5ad", "meth": "h5ad"}

    # the same prot values as a parquet view (reversed row order) join with the AnnData views
    full, has, _, _ = omics_data
    t = pd.DataFrame(full["prot"][has["prot"]], columns=["p0", "p1", "p2"])
    t.insert(0, "sample_id", IDS[has["prot"]])
    t.iloc[::-1].to_parquet(h5ad_dir / "prot.parquet", index=False)
    spec = {**H5AD_SPEC, "views": {**H5AD_SPEC["views"], "pq": {"path": "prot.parquet", "columns": ["p2", "p0"]}}}
    rmv = read_spec(_write(h5ad_dir, "mixed.yaml", spec), num_partitions=2)
    got = rmv.to_multiview()
    assert sorted(got.columns) == ["meth", "pq", "prot", "rna"]
    _check(got, omics_data)
    np.testing.assert_array_equal(got.views["pq"], got.views["prot"])
    assert rmv.likelihoods == {"rna": "negative_binomial"}


def test_h5ad_row_ranges_read_only_their_rows(omics_data, h5ad_dir):
    _, _, _, adatas = omics_data
    src = validate_spec(_write(h5ad_dir, "spec.yaml", H5AD_SPEC)).views["rna"].anndata
    ranges = omics.row_ranges(src.n_obs, len(src.var_names), chunk_values=20)
    assert [r["stop"] - r["start"] for r in ranges[:-1]] == [4] * (len(ranges) - 1)
    assert ranges[0]["start"] == 0 and ranges[-1]["stop"] == src.n_obs
    t = omics.read_rows(src, 4, 8, ["g3", "g1"], "sample_id")
    assert t.column_names == ["sample_id", "g3", "g1"]
    a = adatas["rna"]
    assert t.column("sample_id").to_pylist() == a.obs_names[4:8].tolist()
    np.testing.assert_array_equal(
        np.column_stack([t.column("g3").to_numpy(), t.column("g1").to_numpy()]), a[4:8, ["g3", "g1"]].X.toarray()
    )


def test_h5mu_modalities_are_views_and_absent_samples_have_the_view_missing(ray_session, omics_data, h5mu_dir):
    spec = {
        "id_column": "cell",
        "mudata": "cells.h5mu",
        "views": {
            "rna": {"likelihood": "negative_binomial"},
            "prot": {"columns": ["p2", "p0"], "scaling": "standard"},
            "meth": {"layer": "beta"},
        },
    }
    rmv = read_spec(_write(h5mu_dir, "spec.yaml", spec))
    assert rmv.id_column == "cell"
    rmv.dataset = rmv.dataset.materialize()
    got = rmv.to_multiview()
    _check(got, omics_data)

    # downstream is unchanged: streamed scaling statistics match the collected data
    schema, n = rmv.fit_schema()
    assert n == len(got.index)
    assert schema.likelihoods["rna"] == "negative_binomial" and schema.likelihoods["meth"] == "bounded"
    prot = got.views["prot"]
    np.testing.assert_allclose(schema.scalers["prot"].mean, np.nanmean(prot, 0), rtol=1e-10)
    np.testing.assert_allclose(schema.scalers["prot"].std, np.nanstd(prot, 0, ddof=1), rtol=1e-10)


# ----------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    "views, message",
    [
        ({"rna": {"path": "missing.h5ad"}}, "no such file.*missing.h5ad"),
        ({"rna": {"path": "garbage.h5ad"}}, "cannot read.*garbage.h5ad"),
        ({"meth": {"path": "meth.h5ad", "layer": "counts"}}, r"no layer 'counts'.*layers: \['beta'\]"),
        ({"rna": {"path": "rna.h5ad", "columns": ["g0", "nope"]}}, r"unknown column\(s\) \['nope'\]"),
        ({"rna": {"path": "rna.h5ad", "columns": []}}, "no columns"),
        ({"rna": {"path": "rna.h5ad", "prefix": "zz"}}, "has no columns.*prefix 'zz'"),
        ({"rna": {"path": "rna.parquet", "layer": "counts", "format": "parquet"}}, "layer 'counts' is for AnnData"),
        ({"rna": {"path": "rna.h5mu"}}, "mudata: at the top level"),
    ],
)
def test_bad_h5ad_spec_is_a_value_error_naming_the_problem(h5ad_dir, views, message):
    with pytest.raises(ValueError, match=message) as err:
        validate_spec(_write(h5ad_dir, "bad.yaml", {"id_column": "sample_id", "views": views}))
    assert next(iter(views)) in str(err.value)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"mudata": "nope.h5mu", "views": {"rna": {}}}, "no such file.*nope.h5mu"),
        ({"mudata": "garbage.h5mu", "views": {"rna": {}}}, "cannot read.*garbage.h5mu"),
        ({"mudata": "cells.h5mu", "views": {"rna": {}, "dna": {}}}, r"no modality 'dna'.*\['rna', 'prot', 'meth'\]"),
        ({"mudata": "cells.h5mu", "views": {"meth": {"layer": "counts"}}}, r"view 'meth': no layer 'counts'"),
        ({"mudata": "cells.h5mu", "views": {"prot": {"columns": ["CD4"]}}}, r"unknown column\(s\) \['CD4'\]"),
        ({"mudata": "cells.h5mu", "views": {"prot": {"columns": []}}}, "prot.*no columns"),
        ({"mudata": "cells.h5mu", "views": {"prot": {"path": "x.h5ad"}}}, "view 'prot'.*no path"),
        ({"mudata": "cells.h5mu", "table": "t.csv", "views": {"prot": {}}}, "table or mudata"),
    ],
)
def test_bad_h5mu_spec_is_a_value_error_naming_the_problem(h5mu_dir, spec, message):
    with pytest.raises(ValueError, match=message):
        validate_spec(_write(h5mu_dir, "bad.yaml", spec))


def test_duplicate_obs_names_and_a_var_named_like_the_id_column(tmp_path):
    obs = pd.DataFrame(index=["a", "b", "a"])
    with pytest.warns(UserWarning, match="not unique"):
        dup = ad.AnnData(X=np.zeros((3, 2)), obs=obs, var=pd.DataFrame(index=["x", "y"]))
    dup.write_h5ad(tmp_path / "dup.h5ad")
    with pytest.raises(ValueError, match=r"view 'v': duplicate obs name\(s\) \['a'\]"):
        validate_spec({"views": {"v": {"path": "dup.h5ad"}}, "base_dir": str(tmp_path)})
    obs = pd.DataFrame(index=["a", "b", "c"])
    var = pd.DataFrame(index=["sample_id", "y"])
    ad.AnnData(X=np.zeros((3, 2)), obs=obs, var=var).write_h5ad(tmp_path / "clash.h5ad")
    with pytest.raises(ValueError, match="var name 'sample_id' is also the id column"):
        validate_spec({"views": {"v": {"path": "clash.h5ad"}}, "base_dir": str(tmp_path)})


def test_without_the_extra_the_error_says_how_to_install_it(h5ad_dir, monkeypatch):
    for mod in ("anndata", "anndata.io", "anndata.experimental", "mudata"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ImportError, match=r"pip install 'mvimpute\[omics\]'"):
        validate_spec(_write(h5ad_dir, "spec.yaml", H5AD_SPEC))


def test_library_imports_without_the_extra_and_loads_it_only_on_use():
    code = textwrap.dedent(
        """
        import sys
        for m in ("anndata", "mudata", "h5py"):
            sys.modules[m] = None
        import mvimpute, mvimpute.data.ray_data, mvimpute.data.spec, mvimpute.data.omics
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
