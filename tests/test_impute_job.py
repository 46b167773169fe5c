"""The Ray Data batch job on a 10,000-row Parquet table: rows, ids and order kept, observed cells bit for
bit, nothing left missing where the model has the view, std/interval/draw columns, and a run that
fails midway leaves nothing that looks like output."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mvimpute as mvi
from mvimpute.jobs.batch import MONITOR_ROWS, ROW
from mvimpute.jobs.impute import impute_table
from mvimpute.predictor import InputError

N_ROWS = 10_000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    data = mvi.load_dataset("digits-halves")
    imp = mvi.MultiViewImputer("jpvae", epochs=3, hidden=[32], latent_dim=4, batch_size=256, device="cpu")
    return imp.fit(data).save(tmp_path_factory.mktemp("job") / "model.pt")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """10,000 rows (digits repeated), whole views and single entries missing, float32 in one view, ids
    in a shuffled (not sorted) order, the id column in the middle, several row groups."""
    root = tmp_path_factory.mktemp("table")
    data = mvi.load_dataset("digits-halves")
    big = data.subset(np.resize(np.arange(data.n_samples), N_ROWS))
    wide = mvi.masking.corrupt(big, view_rate=0.4, mcar_rate=0.2, seed=5).data.to_frame().reset_index(drop=True)
    top = [c for c in wide.columns if c.startswith("top:")]
    wide[top] = wide[top].astype(np.float32)
    ids = np.random.default_rng(0).permutation(N_ROWS)
    wide.insert(10, "sample_id", [f"s{i:05d}" for i in ids])
    path = root / "in.parquet"
    wide.to_parquet(path, row_group_size=1700, index=False)
    return path, wide


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def test_batch_job_keeps_rows_ids_order_and_observed_bits(ray_session, checkpoint, table, tmp_path):  # noqa: F811
    src, wide = table
    out = tmp_path / "out" / "imputed.parquet"
    result = impute_table(
        src,
        out,
        checkpoint=checkpoint,
        id_column="sample_id",
        outputs=("std", "interval"),
        n_samples=20,
        batch_size=2048,
        num_workers=1,
    )
    got = pd.read_parquet(out)
    assert result.rows == len(got) == N_ROWS
    feats = [c for c in wide.columns if c != "sample_id"]
    assert list(got.columns[: len(wide.columns)]) == list(wide.columns)  # the id column stays where it was
    assert got["sample_id"].tolist() == wide["sample_id"].tolist()
    assert result.missing_filled == int(wide[feats].isna().to_numpy().sum())
    for c in feats:
        x, y = wide[c].to_numpy(), got[c].to_numpy()
        assert y.dtype == x.dtype, c
        obs = ~np.isnan(x)
        np.testing.assert_array_equal(_bits(y[obs]), _bits(x[obs]), err_msg=c)  # observed cells bit for bit
        assert not np.isnan(y).any(), c
        std, lo, hi = got[f"{c}__std"].to_numpy(), got[f"{c}__lower"].to_numpy(), got[f"{c}__upper"].to_numpy()
        assert (std[obs] == 0).all() and (lo[obs] == x[obs]).all() and (hi[obs] == x[obs]).all()
        assert (lo <= hi).all()
    hidden_std = np.concatenate([got[f"{c}__std"].to_numpy()[wide[c].isna().to_numpy()] for c in feats])
    assert (hidden_std > 0).mean() > 0.99
    # the same numbers as the in-process loop over the same file
    local = impute_table(src, tmp_path / "local.parquet", checkpoint=checkpoint, id_column="sample_id", engine="local")
    ref = pd.read_parquet(local.output)
    np.testing.assert_allclose(got[feats].to_numpy(np.float64), ref[feats].to_numpy(np.float64), rtol=1e-6, atol=1e-6)
    # no temporary file left; the monitoring summary of the table beside it
    assert sorted(p.name for p in out.parent.iterdir()) == ["imputed.monitoring.json", out.name]
    summary = json.loads((out.parent / "imputed.monitoring.json").read_text())
    assert summary == result.monitoring and summary["first_rows"] == min(N_ROWS, MONITOR_ROWS)
    assert all(v["calibration"]["rows"] > 0 and v["state"] in ("ok", "degraded") for v in summary["views"].values())


def test_draw_columns_are_lists_of_n_samples(ray_session, checkpoint, table, tmp_path):  # noqa: F811
    src, wide = table
    small = tmp_path / "small.parquet"
    wide.iloc[:300].to_parquet(small, index=False)
    out = tmp_path / "draws.parquet"
    impute_table(small, out, checkpoint=checkpoint, id_column="sample_id", outputs=("samples",), n_samples=7)
    schema = pq.read_schema(out)
    assert str(schema.field("bottom:px40__draws").type).startswith("list<")
    got = pd.read_parquet(out)
    draws = np.stack(got["bottom:px40__draws"].to_numpy())
    assert draws.shape == (300, 7)
    x = wide["bottom:px40"].to_numpy()[:300]
    obs = ~np.isnan(x)
    assert (draws[obs] == x[obs, None]).all()
    # multiple imputation, not one guess: the draws of most missing entries differ; those that do not
    # sit on a bound of the `bounded` view (a pixel the model draws as 0 every time: an atom)
    const = draws[~obs].std(1) == 0
    assert const.mean() < 0.25 and np.isin(draws[~obs][const], (0.0, 1.0)).all()


def test_a_batch_failing_midway_leaves_no_output(ray_session, checkpoint, table, tmp_path):  # noqa: F811
    src, wide = table
    bad = wide.copy()
    bad.loc[N_ROWS - 10, "bottom:px52"] = np.inf  # in the last row group: earlier batches succeed first
    path = tmp_path / "bad.parquet"
    bad.to_parquet(path, row_group_size=1700, index=False)
    out = tmp_path / "o" / "imputed.parquet"
    out.parent.mkdir()
    with pytest.raises(ValueError, match="bottom.*px52.*Inf"):
        impute_table(path, out, checkpoint=checkpoint, id_column="sample_id", batch_size=1000)
    assert list(out.parent.iterdir()) == []  # neither the file nor a half-written temporary one
    # an earlier good output at the same path survives a failed rerun untouched
    out.write_bytes(b"previous result")
    with pytest.raises(ValueError):
        impute_table(path, out, checkpoint=checkpoint, id_column="sample_id", batch_size=1000)
    assert out.read_bytes() == b"previous result" and len(list(out.parent.iterdir())) == 1


def test_bad_tables_are_refused_before_any_work(checkpoint, tmp_path):
    frame = pd.DataFrame({"top:px00": [0.0, np.nan], "stray": [1.0, 2.0]})
    frame.to_parquet(tmp_path / "stray.parquet")
    with pytest.raises(InputError, match="stray"):
        impute_table(tmp_path / "stray.parquet", tmp_path / "o.parquet", checkpoint=checkpoint)
    pd.DataFrame({"rna:g1": [1.0]}).to_parquet(tmp_path / "rna.parquet")
    with pytest.raises(InputError, match="unknown view 'rna'"):
        impute_table(tmp_path / "rna.parquet", tmp_path / "o.parquet", checkpoint=checkpoint)
    pd.DataFrame({"top:px00": ["a"]}).to_parquet(tmp_path / "text.parquet")
    with pytest.raises(InputError, match="not a number"):
        impute_table(tmp_path / "text.parquet", tmp_path / "o.parquet", checkpoint=checkpoint)
    with pytest.raises(InputError, match="id column 'sid'"):
        impute_table(tmp_path / "rna.parquet", tmp_path / "o.parquet", checkpoint=checkpoint, id_column="sid")
    with pytest.raises(InputError, match="o.xlsx"):
        impute_table(tmp_path / "stray.parquet", tmp_path / "o.xlsx", checkpoint=checkpoint)
    assert not (tmp_path / "o.parquet").exists()


def _read_parts(uri: str) -> tuple[pd.DataFrame, dict]:
    """A folder of parts as a reader takes it: the manifest first, then the parts it names, in order."""
    import json

    import pyarrow.dataset as pds

    from mvimpute import storage

    manifest = json.loads(storage.read_text(storage.join(uri, "_SUCCESS")))
    fs, inner = storage.filesystem(uri)
    frame = pds.dataset(inner, format="parquet", filesystem=fs).to_table().to_pandas()  # skips _ files
    return frame, manifest


@pytest.fixture
def bucket(s3_env):
    import uuid

    import boto3

    name = f"batch-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


def test_bucket_to_bucket_two_actors_write_their_own_parts(ray_session, checkpoint, table, bucket, tmp_path):  # noqa: F811
    """s3:// in, s3:// out: the actors write Parquet parts, the driver publishes them in row order with
    a `_SUCCESS` manifest; every row, id, order and observed bit is kept, the values equal the
    in-process loop's on the local file."""
    from mvimpute import storage

    src, wide = table
    part = wide.iloc[:3000]
    fs, inner = storage.filesystem(f"{bucket}/in/table.parquet")
    pq.write_table(pa.Table.from_pandas(part, preserve_index=False), inner, filesystem=fs, row_group_size=700)
    result = impute_table(
        f"{bucket}/in/",
        f"{bucket}/out",
        checkpoint=checkpoint,
        id_column="sample_id",
        batch_size=500,
        num_workers=2,
        num_cpus=0.5,
    )
    got, manifest = _read_parts(f"{bucket}/out")
    assert result.rows == manifest["rows"] == len(got) == 3000 == sum(p["rows"] for p in manifest["parts"])
    assert len(manifest["parts"]) == 6  # one part per batch, written by the actor that imputed it
    assert got[ROW].tolist() == list(range(3000))  # the parts, read in name order, are in row order
    assert got["sample_id"].tolist() == part["sample_id"].tolist()
    feats = [c for c in part.columns if c != "sample_id"]
    assert result.missing_filled == int(part[feats].isna().to_numpy().sum())
    for c in feats:
        x, y = part[c].to_numpy(), got[c].to_numpy()
        obs = ~np.isnan(x)
        np.testing.assert_array_equal(_bits(y[obs]), _bits(x[obs]), err_msg=c)
    local_src = tmp_path / "in.parquet"
    part.to_parquet(local_src, index=False)
    ref = pd.read_parquet(impute_table(local_src, tmp_path / "l.parquet", checkpoint=checkpoint,
                                       id_column="sample_id", engine="local").output)  # fmt: skip
    np.testing.assert_allclose(got[feats].to_numpy(np.float64), ref[feats].to_numpy(np.float64), rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="already holds a table"):
        impute_table(f"{bucket}/in/", f"{bucket}/out", checkpoint=checkpoint, id_column="sample_id")


def test_a_failed_bucket_job_leaves_nothing_at_the_destination(ray_session, checkpoint, table, bucket):  # noqa: F811
    from mvimpute import storage

    src, wide = table
    bad = wide.iloc[:3000].copy()
    bad.loc[2990, "bottom:px52"] = np.inf  # in the last batch: earlier parts are written first
    fs, inner = storage.filesystem(f"{bucket}/bad/table.parquet")
    pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), inner, filesystem=fs, row_group_size=700)
    with pytest.raises(ValueError, match="bottom.*px52.*Inf"):
        impute_table(f"{bucket}/bad/", f"{bucket}/out", checkpoint=checkpoint, id_column="sample_id", batch_size=500)
    import pyarrow.fs as pafs

    fs, inner = storage.filesystem(f"{bucket}/out")
    left = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    assert [i.path for i in left if i.type == pafs.FileType.File] == []  # no part, no manifest, no staging


def test_uri_errors_name_the_uri(checkpoint, bucket, tmp_path):
    with pytest.raises(InputError, match="no such file or folder.*nothing-here"):
        impute_table(f"{bucket}/nothing-here/", f"{bucket}/o", checkpoint=checkpoint)
    pd.DataFrame({"top:px00": [0.0]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(InputError, match="folder of Parquet parts"):
        impute_table(tmp_path / "t.parquet", f"{bucket}/o.parquet", checkpoint=checkpoint)
    with pytest.raises(ValueError, match="no-such-bucket"):
        impute_table("s3://no-such-bucket-mvimpute/in/", f"{bucket}/o", checkpoint=checkpoint)


def test_parts_are_published_in_row_order_whatever_their_names(tmp_path):
    """The order of the output comes from the row index the parts carry, not from how they were named."""
    from mvimpute.jobs.batch import SUCCESS, publish_parts

    staging = tmp_path / "out" / "_temporary" / "job"
    staging.mkdir(parents=True)
    for name, start in (("z.parquet", 1000), ("a.parquet", 2000), ("m.parquet", 0)):
        pd.DataFrame({"x": np.arange(start, start + 1000) * 0.5, ROW: np.arange(start, start + 1000)}).to_parquet(
            staging / name, index=False
        )
    assert publish_parts(str(staging), str(tmp_path / "out")) == 3000
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [SUCCESS, "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]  # staging gone
    got = pd.read_parquet(tmp_path / "out")
    assert got[ROW].tolist() == list(range(3000)) and np.allclose(got["x"], np.arange(3000) * 0.5)


def test_parts_whose_rows_interleave_are_never_published(tmp_path):
    from mvimpute.jobs.batch import publish_parts

    staging = tmp_path / "out" / "_temporary" / "job"
    staging.mkdir(parents=True)
    pd.DataFrame({ROW: [0, 1, 5]}).to_parquet(staging / "a.parquet", index=False)
    pd.DataFrame({ROW: [2, 3, 4]}).to_parquet(staging / "b.parquet", index=False)
    with pytest.raises(RuntimeError, match="interleave"):
        publish_parts(str(staging), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_rows_from_several_files_and_a_csv_are_numbered_in_input_order(ray_session, checkpoint, table, tmp_path):  # noqa: F811
    """The Ray engine numbers rows piece by piece (Parquet row groups from the footers, a CSV streamed):
    a folder of two Parquet files of several row groups each, and a CSV written with its pandas index
    as the ids, come out in input order with `ROW` from 0 and the values of the in-process loop."""
    _, wide = table
    part = wide.iloc[:2400].reset_index(drop=True)
    folder = tmp_path / "in"
    folder.mkdir()
    part.iloc[:1000].to_parquet(folder / "a.parquet", row_group_size=300, index=False)
    part.iloc[1000:].to_parquet(folder / "b.parquet", row_group_size=500, index=False)
    feats = [c for c in part.columns if c != "sample_id"]
    ref = pd.read_parquet(impute_table(folder, tmp_path / "ref.parquet", checkpoint=checkpoint,
                                       id_column="sample_id", engine="local").output)  # fmt: skip
    impute_table(folder, tmp_path / "out", checkpoint=checkpoint, id_column="sample_id", batch_size=400,
                 num_workers=1, num_cpus=0.5)  # fmt: skip
    got, manifest = _read_parts(str(tmp_path / "out"))
    assert got[ROW].tolist() == list(range(2400)) and manifest["rows"] == 2400
    assert got["sample_id"].tolist() == part["sample_id"].tolist()
    np.testing.assert_allclose(got[feats].to_numpy(np.float64), ref[feats].to_numpy(np.float64), rtol=1e-6, atol=1e-6)

    csv = tmp_path / "in.csv"
    part[feats].set_axis([f"r{i}" for i in range(len(part))]).to_csv(csv)
    impute_table(csv, tmp_path / "out_csv", checkpoint=checkpoint, batch_size=400, num_workers=1, num_cpus=0.5)
    got, _ = _read_parts(str(tmp_path / "out_csv"))
    assert got[ROW].tolist() == list(range(2400))
    assert got["Unnamed: 0"].tolist() == [f"r{i}" for i in range(2400)]
    np.testing.assert_allclose(got[feats].to_numpy(np.float64), ref[feats].to_numpy(np.float64), rtol=1e-5, atol=1e-5)
