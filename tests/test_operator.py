"""What an operator meets first: resources that fit, quiet output, one vocabulary, errors that name the culprit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import mvimpute as mvi
from mvimpute.cli import app
from mvimpute.config import TrainConfig, load_job_config
from mvimpute.engine.resources import ResourceRequestError, plan_worker_resources
from mvimpute.names import DATASET_NAMES, MODEL_NAMES

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
TWO_CPUS = {"CPU": 2.0}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], terminal_width=300)


def one_line(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- resources


def test_default_workers_leave_a_cpu_to_ray_data():
    assert plan_worker_resources(1, cluster=TWO_CPUS) == {"CPU": 1.0}
    assert plan_worker_resources(2, cluster=TWO_CPUS) == {"CPU": 0.5}
    assert plan_worker_resources(4, cluster={"CPU": 16.0}) == {"CPU": 1.0}
    assert plan_worker_resources(2, use_gpu=True, cluster={"CPU": 8.0, "GPU": 2.0}) == {"CPU": 1.0, "GPU": 1.0}


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"num_workers": 3}, "3 worker"),
        ({"num_workers": 1, "use_gpu": True}, "GPU"),
        ({"num_workers": 2, "resources_per_worker": {"CPU": 1}}, "Ray Data"),
    ],
)
def test_requests_the_cluster_cannot_meet_name_the_request(kwargs, named):
    with pytest.raises(ResourceRequestError) as err:
        plan_worker_resources(cluster=TWO_CPUS, **kwargs)
    msg = str(err.value)
    assert named in msg and "2 CPU" in msg, msg


def test_autoscaling_clusters_may_wait_for_resources():
    assert plan_worker_resources(4, use_gpu=True, cluster=TWO_CPUS, wait_for_resources=True) == {"CPU": 1.0, "GPU": 1.0}


@pytest.mark.parametrize(("flags", "named"), [(["--num-workers", "3"], "3 worker"), (["--use-gpu"], "GPU")])
def test_train_fails_fast_on_a_2_cpu_cluster(ray_session, tmp_path, monkeypatch, flags, named):
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    res = invoke("train", "--data", "digits-halves", "--epochs", 1, "--no-tracking", *flags)
    seconds = time.perf_counter() - t0
    assert res.exit_code == 2, res.output
    assert named in one_line(res.output) and "the cluster has 2 CPU(s)" in one_line(res.output), res.output
    assert seconds < 30, seconds
    assert not (tmp_path / "ray_results").exists()


# ----------------------------------------------------------------------------- one vocabulary


def test_names_shown_before_import_match_the_registries():
    assert set(MODEL_NAMES) == set(mvi.MODEL_REGISTRY)
    assert tuple(DATASET_NAMES) == tuple(mvi.DATASETS)


def test_the_example_job_config_is_the_defaults():
    """`jobs/train.yaml` spells out the defaults that apply without --config (no surprise either way),
    and leaves the data-size-dependent ones open, so that they still adapt to small data."""
    from mvimpute.models.defaults import size_defaults

    example = load_job_config(ROOT / "jobs" / "train.yaml")
    assert example.resolved() == load_job_config(None).resolved()
    adaptive = set().union(*(set(size_defaults(m, 40)[1]) for m in mvi.MODEL_REGISTRY))
    assert adaptive and not adaptive & set(example.train), sorted(adaptive & set(example.train))


def test_help_loads_no_torch_and_lists_config_keys():
    code = "import sys, mvimpute.cli; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
    res = invoke("train", "--help")
    assert res.exit_code == 0
    for key in ("train.epochs=100", "train.batch_size=64", "cluster.num_workers=1", "mlflow.alias=champion"):
        assert key in res.output, key
    wide = [line for line in runner.invoke(app, ["fit", "--help"], terminal_width=80).output.splitlines()]
    assert max(len(line) for line in wide) <= 80


def test_fit_train_and_evaluate_share_option_names():
    import typer.main

    group = typer.main.get_command(app)

    def options(name: str) -> set[str]:
        return {o for p in group.commands[name].params for o in getattr(p, "opts", [])}

    shared = {"--data", "--epochs", "--param", "--verbose"}
    for name in ("fit", "train", "evaluate"):
        assert shared <= options(name), (name, shared - options(name))
    assert {"--model", "--seed", "--config"} <= options("fit") & options("train")


def test_job_wrappers_are_the_commands():
    for job, command in (("train.py", "train"), ("evaluate.py", "evaluate")):
        out = subprocess.run(
            [sys.executable, str(ROOT / "jobs" / job), "--help"], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert f"Usage: python jobs/{job}" in out.stdout
        ours, theirs = invoke(command, "--help").output, out.stdout
        assert "".join(ours.split("\n", 1)[1].split()) == "".join(theirs.split("\n", 1)[1].split())


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data = mvi.load_dataset("digits-halves").subset(np.arange(200))
    imp = mvi.MultiViewImputer("jpvae", hidden=[16], latent_dim=2, epochs=1, progress=False).fit(data)
    path = imp.save(tmp_path_factory.mktemp("tiny") / "tiny.pt")
    return imp, path, data


@pytest.mark.parametrize(("content", "named"), [(b"", "empty"), (os.urandom(4096), "damaged")])
def test_a_bad_checkpoint_says_what_is_wrong(tmp_path, content, named):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=named) as err:
        mvi.MultiViewImputer.load(bad)
    assert "weights_only" not in str(err.value) and str(bad) in str(err.value)
    res = invoke("score", "--checkpoint", bad, "--data", "digits-halves")
    assert res.exit_code == 2 and named in res.output and "Traceback" not in res.output, res.output


def test_a_damaged_resume_from_fails_before_any_run_is_created(tmp_path, monkeypatch):
    bad = tmp_path / "model.pt"
    bad.write_bytes(os.urandom(1000))
    monkeypatch.chdir(tmp_path)
    res = invoke("train", "--resume-from", bad, "--epochs", 1)
    assert res.exit_code == 2, res.output
    assert "resume_from" in res.output and "damaged" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_zero_rows_and_wrong_types_are_named(tiny):
    imp, _, data = tiny
    empty = {v: a[:0] for v, a in data.views.items()}
    with pytest.raises(ValueError, match="0 samples"):
        imp.transform(empty)
    with pytest.raises(ValueError, match="epochs must be int, got 2.5"):
        TrainConfig(epochs=2.5)
    with pytest.raises(ValueError, match="epochs must be int"):
        mvi.MultiViewImputer("jpvae", epochs=2.5)
    res = invoke("fit", "--data", "digits-halves", "train.epochs=2.5")
    assert res.exit_code == 2 and "epochs must be int" in res.output, res.output


def test_untrainable_columns_are_refused_at_fit():
    data = mvi.load_dataset("synthetic-omics").subset(np.arange(100))
    rna = data.views["rna"].copy()
    rna[:, 3] = np.nan
    with pytest.raises(ValueError, match=r"view 'rna', column\(s\) \['rna_3'\]: no observed value"):
        mvi.MultiViewImputer("jpvae", epochs=1).fit({**data.views, "rna": rna})
    rna = data.views["rna"].copy()
    rna[5, 7] = 1e300
    with pytest.raises(ValueError, match=r"view 'rna', column 'rna_7': values up to 1e\+300 overflow"):
        mvi.MultiViewImputer("jpvae", epochs=1).fit({**data.views, "rna": rna})
    fitted = mvi.MultiViewImputer("jpvae", hidden=[8], latent_dim=2, epochs=1, progress=False).fit(data)
    with pytest.raises(ValueError, match=r"view 'rna', column 'rna_7': values up to 1e\+300 overflow"):
        fitted.transform({**data.views, "rna": rna})


def test_impute_keeps_the_index_and_reads_csvs_written_with_one(tiny, tmp_path):
    imp, path, data = tiny
    frame = mvi.masking.hide_view(data.subset([2, 12, 13]), "bottom").data.to_frame()
    frame.index = [2, 12, 13]
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    frame.to_csv(src)  # with its pandas index: a first column "Unnamed: 0"
    res = invoke("impute", "--checkpoint", path, "--input", src, "--output", dst)
    assert res.exit_code == 0, res.output
    out = pd.read_csv(dst, index_col=0)
    assert list(out.index) == [2, 12, 13]
    assert list(out.columns) == list(frame.columns)
    assert not out.isna().any().any()
    observed = frame.notna().to_numpy()
    np.testing.assert_allclose(out.to_numpy()[observed], frame.to_numpy()[observed])


def test_score_refuses_a_split_other_than_fits(tmp_path):
    out = tmp_path / "m.pt"
    res = invoke("fit", "--data", "digits-halves", "--epochs", 1, "--out", out, "-p", "hidden=[16]", "--test-frac", 0.3)
    assert res.exit_code == 0, res.output
    res = invoke("score", "--checkpoint", out, "--test-frac", 0.2, "--n-samples", 0)
    assert res.exit_code == 2 and "--test-frac" in res.output and "training samples" in one_line(res.output)
    res = invoke("score", "--checkpoint", out, "--n-samples", 0)  # the recorded split: data and share
    assert res.exit_code == 0, res.output
    assert re.search(r"\b5[34]\d test samples \(test share 0.3, split seed 0\)", res.output), res.output


# ----------------------------------------------------------------------------- a real run, as an operator sees it


def _readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- mlflow-snippet -->\s*```python\n(.*?)```", text, flags=re.S)
    assert match, "the README's MLflow snippet is marked with <!-- mlflow-snippet -->"
    return match.group(1)


@pytest.mark.slow
def test_train_output_is_quiet_ctrl_c_keeps_a_checkpoint_and_the_readme_snippet_runs(tmp_path):
    """`mvimpute train` as a subprocess in a fresh folder (its own local Ray, MLflow's default store):
    a line per epoch, no ANSI codes; Ctrl-C stops it with a resumable checkpoint; the resumed run
    registers the model, and the README's MLflow snippet loads it as written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    exe = str(Path(sys.executable).with_name("mvimpute"))
    cmd = [exe, "train", "--data", "digits-halves", "-p", "hidden=[32]", "-p", "latent_dim=4", "--run-name", "op"]
    proc = subprocess.Popen(
        [*cmd, "--epochs", "40"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first: list[str] = []
    for line in proc.stdout:
        first.append(line)
        if line.startswith("epoch 2/40"):
            proc.send_signal(2)  # SIGINT, as Ctrl-C
            break
    rest, _ = proc.communicate(timeout=120)
    first_out = "".join(first) + rest
    assert proc.returncode == 130, first_out
    assert "resume with --run-name op" in first_out, first_out
    assert len(first_out.strip().splitlines()) <= 20 and "\x1b[" not in first_out, first_out
    assert list((tmp_path / "ray_results" / "op").glob("checkpoint_*")), "the interrupted run left no checkpoint"

    # Ctrl-C lands after "epoch 2/40" is printed, but epochs are short: the run may have checkpointed a
    # few more before it stopped. Resume for two epochs past its newest checkpoint, whichever that is.
    from mvimpute.engine.worker import newest_checkpoint

    k = newest_checkpoint(str(tmp_path / "ray_results"), "op")["loop"]["epoch"]
    total = k + 2
    done = subprocess.run([*cmd, "--epochs", str(total)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "\x1b[" not in out
    lines = out.strip().splitlines()
    assert len(lines) <= 30, out
    epochs = [line for line in lines if line.startswith("epoch ")]
    shown = [e.split()[1] for e in epochs]
    assert shown == [f"{k + 1}/{total}", f"{total}/{total}"], out  # resumed from the last checkpoint before Ctrl-C
    assert "model URI models:/mvimpute-jpvae@champion" in out and re.search(rf"best epoch \d+ of {total}", out), out

    snippet = subprocess.run(
        [sys.executable, "-c", _readme_snippet()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert snippet.returncode == 0, snippet.stderr[-3000:]
    assert "bottom:" in snippet.stdout and "NaN" not in snippet.stdout, snippet.stdout


def test_the_readme_commands_use_this_vocabulary():
    text = (ROOT / "README.md").read_text()
    for stale in ("--model-path", "mlruns.db", "fit --dataset"):
        assert stale not in text, stale


def test_checkpoints_record_epochs_from_one(tiny):
    imp, path, _ = tiny
    assert [h["epoch"] for h in imp.history_] == [1]
    assert mvi.MultiViewImputer.load(path).best_epoch_ == imp.best_epoch_ == 1
    assert torch.load(path, weights_only=True)["best_epoch"] == 1
