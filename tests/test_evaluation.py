"""The mask-and-score evaluation grid."""

import json

import numpy as np
import pytest

import mvimpute as mvi
from mvimpute.evaluation import downstream_accuracy, evaluate


def test_evaluate_writes_every_number_and_figure(tmp_path):
    data = mvi.load_dataset("synthetic-omics", n_samples=150, dims=(6, 5, 4), seed=0)
    models = {"jpvae": {"model": "jpvae", "hidden": (16, 16), "latent_dim": 3, "epochs": 2}}
    rows = evaluate(
        data,
        models,
        baselines=("column-mean", "knn"),
        mechanisms=("mcar", "view"),
        rates=(0.3,),
        seeds=(0,),
        n_samples=10,
        out_dir=tmp_path,
        progress=False,
    )
    assert len(rows) == 2 * 3
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n") == 2 + 2 * 3
    for png in ("score_vs_rate.png", "calibration.png"):
        assert (tmp_path / png).stat().st_size > 1000
    jp = [r for r in rows if r["method"] == "jpvae"]
    assert all(0 <= r["coverage_90"] <= 1 and "coverage_10" in r for r in jp)
    assert all("coverage_90" not in r for r in rows if r["method"] == "column-mean")
    # the same masks for every method: identical numbers of hidden entries
    for mech in ("mcar", "view"):
        assert len({r["n_hidden"] for r in rows if r["mechanism"] == mech}) == 1


def test_evaluate_rejects_unknown_names(tmp_path):
    data = mvi.load_dataset("synthetic-omics", n_samples=50, dims=(3, 3), seed=0)
    with pytest.raises(ValueError, match="nope"):
        evaluate(data, {}, baselines=("nope",), out_dir=tmp_path)
    with pytest.raises(ValueError, match="mnar"):
        evaluate(data, {}, baselines=(), mechanisms=("mnar",), out_dir=tmp_path)
    with pytest.raises(ValueError, match="label"):
        evaluate(data, {}, baselines=(), label="label", out_dir=tmp_path)


class _Votes:
    """Draws that classify as the truth in 2 of 3 draws: the majority vote must be right."""

    def __init__(self, truth, wrong):
        self.truth, self.wrong = truth, wrong

    def transform(self, views):
        return views

    def sample(self, views, n_samples):
        return {v: np.stack([self.truth[v], self.wrong[v], self.truth[v]]) for v in views}


def test_downstream_accuracy_takes_the_majority_vote():
    data = mvi.load_dataset("digits-halves")
    train, test = data.split(0.3, seed=0)
    y_tr, y_te = train.obs["label"].to_numpy(), test.obs["label"].to_numpy()
    wrong = {v: np.roll(a, 1, axis=0) for v, a in test.views.items()}
    acc = downstream_accuracy(_Votes(test.views, wrong), train, y_tr, test, y_te, n_draws=3)
    only_wrong = downstream_accuracy(_Votes(wrong, wrong), train, y_tr, test, y_te, n_draws=3)
    assert acc > 0.9 and only_wrong < 0.3


def test_job_entry_point_runs_the_same_call(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "jobs" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate_job", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    job.main(["--data", "digits-halves", "--models", "", "--baselines", "column-mean,knn", "--mechanisms", "view",
              "--rates", "0.5", "--seeds", "3", "--out", str(tmp_path), "--no-progress"])
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in rows] == ["column-mean", "knn"] and {r["seed"] for r in rows} == {3}
    assert "| view | 0.5 | knn |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        job.main(["--models", "gan", "--out", str(tmp_path / "bad")])
    assert err.value.code == 2 and "'gan'" in capsys.readouterr().err
