"""The engine's run request and callbacks: one setup for `fit` and `train`, a model config built once
and carried unchanged to the workers, tracking plugged in from outside."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

import mvimpute as mvi
from mvimpute.checkpoint import read_checkpoint, view_infos
from mvimpute.config import load_job_config
from mvimpute.data.multiview import ViewSchema
from mvimpute.engine.callbacks import FAILED, FINISHED, KILLED, RunCallback, run_with_callbacks
from mvimpute.engine.request import Resources, Storage, make_request
from mvimpute.models import jpvae
from mvimpute.training import settings_for

SIZE_KEYS = ("batch_size", "weight_decay", "patience", "val_frac")


class _Count:
    """Counts how often JPVAE's config is built (its `__post_init__` validates it)."""

    def __init__(self, monkeypatch) -> None:
        self.n = 0
        original = jpvae.JPVAEConfig.__post_init__

        def counted(config) -> None:
            self.n += 1
            original(config)

        monkeypatch.setattr(jpvae.JPVAEConfig, "__post_init__", counted)


def test_a_sampled_alpha_reaches_the_model_config_validated_once(monkeypatch):
    """search space → Tune's sample → `RunRequest.with_values` → `JPVAEConfig`, which the worker
    uses as it is: the request built once, each trial's values checked once, nothing on the way
    (pickling through Ray, building the model) builds the config again."""
    count = _Count(monkeypatch)
    request = make_request("jpvae", {"latent_dim": 3, "hidden": [8]}, {"epochs": 2})
    assert count.n == 1
    trial = request.with_values({"alpha": 0.7})
    assert count.n == 2 and trial.model_config.alpha == 0.7 and request.model_config.alpha == jpvae.JPVAEConfig.alpha
    travelled = pickle.loads(pickle.dumps(trial))  # what Ray does to it on its way to a worker
    data = mvi.load_dataset("synthetic-omics", n_samples=50, dims=(6, 4))
    model = travelled.build_model(view_infos(ViewSchema.fit(data)))
    assert count.n == 2
    assert model.config.alpha == 0.7 and tuple(model.config.hidden) == (8,)


def test_bad_values_fail_at_the_edge_naming_them():
    with pytest.raises(ValueError, match="alpha"):
        make_request("jpvae", {"alpha": 2.0})
    with pytest.raises(ValueError, match="no parameter.*alfa"):
        make_request("jpvae").with_values({"alfa": 0.5})
    with pytest.raises(ValueError, match="epochz"):
        make_request("jpvae", None, {"epochz": 3})
    with pytest.raises(ValueError, match="unknown model"):
        make_request("jpvea")
    with pytest.raises(ValueError, match="num_workers"):
        Resources(num_workers=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        Storage(checkpoint_every=0)


def test_a_job_configs_request_keeps_the_size_defaults_open():
    """Keys the job config leaves out adapt to small data as `fit`'s do; keys it sets are kept."""
    from mvimpute.jobs.train import given_keys, job_request

    job = load_job_config({"model": "jpvae", "train": {"batch_size": 32}, "model_params": {"latent_dim": 3}})
    request = job_request(job).sized_for(80, given_keys(job))
    imp = mvi.MultiViewImputer("jpvae", batch_size=32, latent_dim=3)
    model_config, cfg = settings_for("jpvae", imp.model_params, imp.train_config, 80, imp.given_params_)
    assert request.model_config == model_config
    assert request.train.batch_size == 32 == cfg.batch_size and request.model_config.latent_dim == 3
    assert request.train.weight_decay == cfg.weight_decay == 1e-3  # the small-data default, applied
    assert request.train.val_frac == 0.2 and request.model_config.cross_shrinkage == "auto"
    assert make_request("jpvae").sized_for(5000, set()) == make_request("jpvae")  # large data: unchanged


class _Recorder(RunCallback):
    def __init__(self) -> None:
        self.calls: list = []

    def on_start(self, name, request) -> None:
        self.calls.append(("start", name))

    def on_end(self, result, status) -> None:
        self.calls.append(("end", result, status))


@pytest.mark.parametrize(
    ("body", "status", "raises"),
    [(lambda: 7, FINISHED, None), (lambda: 1 / 0, FAILED, ZeroDivisionError), (None, KILLED, KeyboardInterrupt)],
)
def test_a_runs_end_status_is_decided_in_one_place(body, status, raises):
    def interrupted():
        raise KeyboardInterrupt

    rec = _Recorder()
    run = body or interrupted
    if raises is None:
        assert run_with_callbacks([rec], "r", None, run) == 7
    else:
        with pytest.raises(raises):
            run_with_callbacks([rec], "r", None, run)
    assert rec.calls == [("start", "r"), ("end", 7 if status == FINISHED else None, status)]


@pytest.mark.slow
def test_fit_and_train_build_the_same_model_for_the_same_small_data(ray_session, tmp_path):  # noqa: ARG001
    """`MultiViewImputer.fit` and the Ray Train runner, given the same 120 samples and no size
    options, build the same model (widths, latent size, shrinkage) with the same loop settings."""
    from mvimpute.engine.runner import train_distributed

    data = mvi.load_dataset("synthetic-omics", n_samples=120, dims=(12, 8))
    imp = mvi.MultiViewImputer("jpvae", epochs=1, progress=False).fit(data)
    result = train_distributed(data, "jpvae", None, {"epochs": 1}, storage_path=tmp_path, preview_rows=0)
    ours = read_checkpoint(imp.save(tmp_path / "fit.pt"))
    theirs = read_checkpoint(result.checkpoint_file)
    assert theirs["model_config"] == ours["model_config"]
    assert ours["model_config"]["hidden"] != jpvae.JPVAEConfig().hidden  # the small-data widths, in both
    for key in SIZE_KEYS:
        assert theirs["train_config"][key] == ours["train_config"][key], key
    for state in (ours, theirs):  # both keep serving's monitoring reference: training's drift statistics and scores
        ref = state["monitoring"]
        assert set(ref["views"]) == set(data.views) and set(ref["validation"]) == set(data.views)
        assert all(len(r["feature_mean"]) == data.dims[v] for v, r in ref["views"].items())


def test_the_newest_whole_checkpoint_of_a_run_is_found(tmp_path):
    """A checkpoint written but cut short (a lost node, Ctrl-C) is passed over for the one before it."""
    from mvimpute.engine.worker import newest_checkpoint

    imp = mvi.MultiViewImputer("jpvae", epochs=1, latent_dim=2, hidden=[8], progress=False)
    imp.fit(mvi.load_dataset("synthetic-omics", n_samples=60, dims=(4, 3)))
    run = tmp_path / "run"
    imp.save(run / "checkpoint_2026-01-01_00-00-01.000000" / "model.pt")
    (run / "checkpoint_2026-01-01_00-00-02.000000").mkdir()
    (run / "checkpoint_2026-01-01_00-00-02.000000" / "model.pt").write_bytes(b"cut short")
    found = newest_checkpoint(str(tmp_path), "run")
    assert found is not None and found["model"] == "jpvae"
    assert newest_checkpoint(str(tmp_path), "other") is None and newest_checkpoint(str(tmp_path), None) is None


@pytest.mark.slow
def test_a_run_run_again_resumes_from_a_checkpoint_ray_never_registered(ray_session, tmp_path):  # noqa: ARG001
    """Ray Train restores a named run from the checkpoints its controller registered; one a worker wrote
    just before the driver stopped is found in the run's folder all the same."""
    from mvimpute.engine.runner import train_distributed

    data = mvi.load_dataset("synthetic-omics", n_samples=200, dims=(6, 4))
    options = {"storage_path": tmp_path, "run_name": "again", "preview_rows": 0}
    params = {"latent_dim": 2, "hidden": [8]}
    first = train_distributed(data, "jpvae", params, {"epochs": 2}, **options)
    (tmp_path / "again" / "checkpoint_manager_snapshot.json").unlink()  # as if the controller never saw them
    second = train_distributed(data, "jpvae", params, {"epochs": 3}, **options)
    assert [h["epoch"] for h in second.history] == [1, 2, 3]
    assert second.history[:2] == first.history and second.attempts == [0, 2]


def test_a_trial_checkpoint_in_a_bucket_is_named_by_its_uri():
    """Ray names a checkpoint in object storage by its path inside the bucket; the registry must get a URI."""
    from mvimpute.engine.search import checkpoint_uri

    assert checkpoint_uri("lab/sweeps/s/t1/checkpoint_000003", "s3://lab/sweeps") == "s3://lab/sweeps/s/t1/checkpoint_000003"
    assert checkpoint_uri("s3://lab/a/checkpoint_1", "s3://lab") == "s3://lab/a/checkpoint_1"
    assert checkpoint_uri("/home/u/ray_results/s/t1/checkpoint_1", "/home/u/ray_results") == (
        "/home/u/ray_results/s/t1/checkpoint_1"
    )
    assert checkpoint_uri(None, "s3://lab") is None


HEAP_PATTERN = """
import sys
import torch
from mvimpute.engine.worker import limit_heap_fragmentation

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

torch.set_num_threads(1)
fixed = limit_heap_fragmentation() if sys.argv[1] == "fixed" else False
x = torch.ones(32 * 2**20 // 4)
del x  # freeing a block this large raises glibc's mmap threshold, unless it is fixed
before = rss_mib()
kept = []
for chunk in range(24):  # like scoring or calibrating chunk after chunk of validation rows
    transient = [torch.ones((2 + (3 * chunk + k) % 25) * 2**20 // 4) for k in range(6)]
    kept.append(torch.ones(200_000))  # what a chunk leaves behind (0.8 MB: its collected draws)
    del transient
print(fixed, rss_mib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_worker_keeps_no_freed_transients_of_chunk_after_chunk():
    """With the mmap threshold fixed (what every training worker does first), memory left after many
    chunks' transient tensors (2–26 MB each, 6 per chunk) is what the chunks kept (24 × 0.8 MB), not
    freed space between them. glibc's own rising threshold leaves far more here (hundreds of MB on
    this machine's glibc, varying from run to run)."""
    out = subprocess.run([sys.executable, "-c", HEAP_PATTERN, "fixed"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    fixed, grown = out.stdout.split()
    assert fixed == "True"
    assert float(grown) < 24 * 0.8 + 12, out.stdout
