"""Checkpoints given by URI (`s3://…`, moto's server): read through pyarrow's filesystems by the API,
the CLI and a run's `resume_from`; a missing object is an error naming the URI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mvimpute as mvi
from mvimpute.checkpoint import read_checkpoint

BUCKET = "mvimpute-uris"
MVIMPUTE = str(Path(sys.executable).parent / "mvimpute")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, s3_server):
    if s3_server is None:
        pytest.skip("moto's S3 server is not installed (the k8s extra)")
    import boto3

    data = mvi.load_dataset("digits-halves")
    imp = mvi.MultiViewImputer("mvae", latent_dim=4, hidden=16, epochs=1, seed=0).fit(data)
    path = imp.save(tmp_path_factory.mktemp("ckpt") / "model.pt")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(path), BUCKET, "file/model-7.pt")
    s3.upload_file(str(path), BUCKET, "folder/checkpoint_000003/model.pt")
    return data, imp, path


@pytest.mark.parametrize("key", ["file/model-7.pt", "folder/checkpoint_000003", "folder/checkpoint_000003/"])
def test_a_checkpoint_loads_from_the_bucket_as_from_disk(saved, key):
    data, imp, path = saved
    remote = mvi.MultiViewImputer.load(f"s3://{BUCKET}/{key}")
    local = read_checkpoint(path)
    got = read_checkpoint(f"s3://{BUCKET}/{key}")
    assert got["model"] == local["model"] == "mvae"
    for name, tensor in local["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), name
    torch.manual_seed(0)
    a = remote.transform(data)
    torch.manual_seed(0)
    b = imp.transform(data)
    np.testing.assert_array_equal(a.views["bottom"], b.views["bottom"])


def test_a_missing_object_or_bucket_is_an_error_naming_the_uri(saved):
    for uri in (f"s3://{BUCKET}/nothing/here.pt", "s3://no-such-bucket-mvimpute/model.pt"):
        with pytest.raises(FileNotFoundError, match=uri.split("//")[1].split("/")[0]):
            read_checkpoint(uri, what="resume_from")


def test_the_cli_takes_a_checkpoint_uri_and_refuses_a_missing_local_path(saved, tmp_path):
    uri = f"s3://{BUCKET}/file/model-7.pt"
    ok = subprocess.run(
        [MVIMPUTE, "score", "--checkpoint", uri, "--data", "digits-halves"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "rmse" in ok.stdout.lower(), ok.stdout
    missing = subprocess.run(
        [MVIMPUTE, "score", "--checkpoint", f"s3://{BUCKET}/file/gone.pt", "--data",
         "digits-halves"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2 and "s3://" in missing.stderr and "gone.pt" in missing.stderr, missing.stderr
    local = subprocess.run(
        [MVIMPUTE, "score", "--checkpoint", str(tmp_path / "none.pt"), "--data",
         "digits-halves"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert local.returncode == 2 and "does not exist" in local.stderr, local.stderr


def _spec(tmp_path, views: dict) -> str:
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"id_column": "sample_id", "views": views}, sort_keys=False))
    return str(path)


def test_a_spec_reads_bucket_files_and_folders_and_names_what_is_missing(saved, tmp_path, ray_session):
    import pandas as pd

    from mvimpute import storage
    from mvimpute.data.ray_data import read_spec
    from mvimpute.data.spec import validate_spec

    data = saved[0]
    for v in data.view_names:
        frame = pd.DataFrame(data.views[v], columns=data.columns[v])
        frame.insert(0, "sample_id", [str(i) for i in range(len(frame))])
        for k, rows in enumerate((slice(0, 900), slice(900, None))):  # a folder of two parts
            fs, inner = storage.filesystem(f"s3://{BUCKET}/spec/{v}/part-{k}.parquet")
            with fs.open_output_stream(inner) as out:
                frame.iloc[rows].to_parquet(out, index=False)
    resolved = validate_spec(_spec(tmp_path, {v: {"path": f"s3://{BUCKET}/spec/{v}/"} for v in data.view_names}))
    assert [len(resolved.views[v].files) for v in data.view_names] == [2, 2]
    got = read_spec(_spec(tmp_path, {v: {"path": f"s3://{BUCKET}/spec/{v}"} for v in data.view_names})).to_multiview()
    rows = np.asarray(got.index).astype(int)  # the per-view tables joined on the id: rows in the join's order
    for v in data.view_names:
        np.testing.assert_array_equal(got.views[v], data.views[v][rows])

    with pytest.raises(ValueError, match=f"no such object or folder 's3://{BUCKET}/spec/nothing.parquet'"):
        validate_spec(_spec(tmp_path, {"top": {"path": f"s3://{BUCKET}/spec/nothing.parquet"}, "bottom":
                                        {"path": f"s3://{BUCKET}/spec/bottom/"}}))  # fmt: skip
    storage.write_text(f"s3://{BUCKET}/spec/a.h5ad", "not read")
    with pytest.raises(ValueError, match="local disk only"):
        validate_spec(_spec(tmp_path, {"top": {"path": f"s3://{BUCKET}/spec/a.h5ad"}, "bottom":
                                        {"path": f"s3://{BUCKET}/spec/bottom/"}}))  # fmt: skip
