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
