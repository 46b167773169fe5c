"""The code a logged model ships: `tracking.MODEL_CODE` is the import closure of the pyfunc's entry
modules (walked with `ast`), a logged model's code tree is exactly that list, and the model, loaded
with `mlflow.pyfunc.load_model` in a fresh process, runs from its shipped code and predicts."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mvimpute as mvi
from mvimpute import tracking

PKG = Path(tracking.__file__).resolve().parent
# what the pyfunc runs: its model file, the predictor it builds, and of tracking.py only its module
# level and the pyfunc class (the rest of tracking.py logs runs and is never called by a loaded model)
ENTRIES = {"mvimpute.pyfunc_model": None, "mvimpute.predictor": None}
SCOPES = {"mvimpute.tracking": {"MultiViewPyfunc", "set_pyfunc_model"}}


def module_file(name: str) -> Path | None:
    if name != "mvimpute" and not name.startswith("mvimpute."):
        return None
    path = PKG.parent.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def import_nodes(tree: ast.Module, scope: set[str] | None):
    """Every import statement, or with `scope` those at module level and inside the named definitions."""
    if scope is None:
        return [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    out = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in scope:
            out += [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
    return out


def imported(name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The module names an import statement in module `name` may load (submodules included)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        package = name.split(".") if module_file(name).name == "__init__.py" else name.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, *([node.module] if node.module else [])])
    return [base, *(f"{base}.{a.name}" for a in node.names)]


def closure(entries) -> set[str]:
    """The package's modules the entries import, directly or not, parent packages included."""
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for node in import_nodes(ast.parse(path.read_text()), SCOPES.get(name)):
            todo += [m for m in imported(name, node) if module_file(m) is not None]
    return seen


def relative(name: str) -> str:
    return module_file(name).relative_to(PKG).as_posix()


def expand(entries) -> set[str]:
    """`MODEL_CODE` as the files it copies (paths under mvimpute/)."""
    out = set()
    for entry in entries:
        path = PKG / entry
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        out |= {p.relative_to(PKG).as_posix() for p in files if "__pycache__" not in p.parts and p.suffix != ".pyc"}
    return out


def test_model_code_is_the_import_closure_of_the_pyfunc():
    needed = {relative(m) for m in closure(ENTRIES)} - {"pyfunc_model.py"}  # MLflow keeps that file itself
    listed = set(tracking.MODEL_CODE)
    missing = {f for f in needed if f not in listed and f.split("/")[0] not in listed}
    assert not missing, f"a logged model imports {sorted(missing)}: add them to tracking.MODEL_CODE"
    for entry in listed:
        assert (PKG / entry).exists(), f"MODEL_CODE names {entry}, which is not in the package"
        used = entry in needed or any(f.startswith(entry + "/") for f in needed)
        assert used, f"MODEL_CODE names {entry}, which no logged model imports"
    shipped = expand(listed)
    for never in ("cli.py", "cli_serving.py", "sweep.py", "distributed.py", "endpoint.py", "plots.py"):
        assert never not in shipped
    assert not any(f.split("/")[0] in ("engine", "jobs") for f in shipped), shipped


def test_the_predictor_sits_above_the_registry_and_below_tracking():
    def imports(name: str) -> set[str]:
        tree = ast.parse(module_file(name).read_text())
        return {m for node in import_nodes(tree, None) for m in imported(name, node)}

    assert not imports("mvimpute.registry") & {
        "mvimpute.predictor",
        "mvimpute.imputer",
        "mvimpute.tracking",
        "mvimpute.plots",
    }
    assert "mvimpute.tracking" not in imports("mvimpute.predictor")
    assert "mvimpute.registry" in imports("mvimpute.predictor")


@pytest.fixture(scope="module", autouse=True)
def _leave_the_environment_as_found():
    """Starting a run exports MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI; later tests must not inherit them."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny JPVAE logged to a SQLite store: (tracking URI, model URI, checkpoint, the store's folder)."""
    root = tmp_path_factory.mktemp("logged")
    data = mvi.load_dataset("digits-halves")
    imp = mvi.MultiViewImputer("jpvae", epochs=2, hidden=[16], latent_dim=3, batch_size=256, device="cpu")
    ckpt = imp.fit(data).save(root / "model.pt")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run = tracking.start_run("model-code", "model-code", tracking_uri=uri)
    model_uri = tracking.log_model(run, ckpt)
    tracking.end_run(run)
    return uri, model_uri, ckpt, root


def test_a_logged_model_ships_exactly_model_code(logged):
    import mlflow

    uri, model_uri, _, root = logged
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(root / "dl"), tracking_uri=uri))
    code = local / "code" / "mvimpute"
    shipped = {p.relative_to(code).as_posix() for p in code.rglob("*") if p.is_file()}
    assert shipped == expand(tracking.MODEL_CODE)
    assert not shipped & {"cli.py", "sweep.py", "jobs_train.py", "distributed.py", "evaluation.py"}
    assert not any(f.startswith(("engine/", "jobs/")) for f in shipped)


def test_a_logged_model_predicts_from_its_own_code_in_a_fresh_process(logged, tmp_path):
    from mvimpute.predictor import Predictor

    uri, model_uri, ckpt, _ = logged
    frame = mvi.masking.hide_view(mvi.load_dataset("digits-halves").subset(np.arange(6)), "bottom").data.to_frame()
    frame.reset_index(drop=True).to_parquet(tmp_path / "in.parquet")
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "import mvimpute, mvimpute.predictor\n"
        "pd.DataFrame(model.predict(pd.read_parquet(sys.argv[2]))).to_parquet(sys.argv[3])\n"
        "print(json.dumps([mvimpute.__file__, mvimpute.predictor.__file__, sorted(sys.modules)]))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", script, model_uri, str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    package, predictor, modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(package).parent.parent.name == "code" and Path(predictor).parent == Path(package).parent
    assert not [m for m in modules if m.startswith(("mvimpute.cli", "mvimpute.sweep", "mvimpute.engine"))]
    got = pd.read_parquet(tmp_path / "out.parquet")
    expected = Predictor.from_checkpoint(ckpt, device="cpu").predict_frame(frame.reset_index(drop=True))
    np.testing.assert_allclose(got[list(frame.columns)].to_numpy(), expected[list(frame.columns)].to_numpy(), rtol=1e-6)


def test_a_predictor_reloads_when_its_alias_moves(logged):
    from mvimpute import registry
    from mvimpute.predictor import Predictor

    uri, model_uri, _, _ = logged
    run = tracking.start_run("model-code", "versions", tracking_uri=uri)
    first = tracking.register_model(run, model_uri, "follow", alias=None)
    registry.set_alias(first, registry.CHAMPION, uri)
    served = Predictor.from_model_uri("models:/follow@champion", uri, device="cpu")
    assert served.follows_alias and served.info["version"] == "1" and served.reload_if_moved() is None
    tracking.register_model(run, model_uri, "follow")  # version 2 takes the alias
    tracking.end_run(run)
    fresh = served.reload_if_moved()
    assert fresh is not None and fresh.info["version"] == "2" and fresh.info["alias"] == registry.CHAMPION
    assert fresh.follows_alias and fresh.reload_if_moved() is None
    pinned = Predictor.from_model_uri(first, uri, device="cpu")
    assert not pinned.follows_alias and pinned.reload_if_moved() is None


def test_the_registry_is_the_given_store_whatever_another_run_left_behind(logged, tmp_path):
    """Starting a run sets MLflow's registry URI (and exports MLFLOW_REGISTRY_URI, which Ray workers
    started afterwards inherit): a given tracking URI must still name the registry."""
    import mlflow

    from mvimpute import registry
    from mvimpute.predictor import Predictor

    uri, model_uri, _, _ = logged
    run = tracking.start_run("model-code", "elsewhere", tracking_uri=uri)
    registry.set_alias(tracking.register_model(run, model_uri, "stray-env", alias=None), "stable", uri)
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        assert registry.model_version("models:/stray-env@stable", uri)["version"] == "1"
        assert Predictor.from_model_uri("models:/stray-env@stable", uri, device="cpu").info["version"] == "1"
        assert tracking.register_model(run, model_uri, "stray-env") == "models:/stray-env@champion"
    finally:
        mlflow.set_registry_uri(uri)
    tracking.end_run(run)
    assert registry.model_version("models:/stray-env@champion", uri)["version"] == "2"


def test_a_trial_run_again_takes_up_its_run_and_no_other(tmp_path):
    """A restored sweep's trial adopts the child run of the same parent with its trial id that did not
    fail (status back to RUNNING); another trial id, another parent, no adoption or a failed attempt
    give new runs."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.start_run("adopt", "sweep", tracking_uri=uri)
    other = tracking.start_run("adopt", "sweep-2", tracking_uri=uri)

    def trial(tid, parent_id, adopt=True):
        return tracking.start_run(
            "adopt", f"sweep-{tid}", tracking_uri=uri, parent_run_id=parent_id,
            tags={"mvimpute.trial_id": tid}, adopt_tag="mvimpute.trial_id" if adopt else None,
        ).run_id  # fmt: skip

    first = trial("t1", parent.run_id)
    tracking.end_run(tracking.RunRef(uri, first, parent.experiment_id), "FINISHED")
    assert trial("t1", parent.run_id) == first
    assert tracking.MlflowClient(uri).get_run(first).info.status == "RUNNING"
    ids = {first, trial("t2", parent.run_id), trial("t1", other.run_id), trial("t1", parent.run_id, adopt=False)}
    assert len(ids) == 4
    failed = trial("t3", parent.run_id)
    tracking.end_run(tracking.RunRef(uri, failed, parent.experiment_id), "FAILED")
    assert trial("t3", parent.run_id) != failed  # a failed attempt keeps its run; the rerun gets its own
