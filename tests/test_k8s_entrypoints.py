"""Every RayJob entry point in the committed manifests (k8s/jobs: the jobs and the environments' patches) is a
command line its program accepts: split as the shell splits it, its paths inside the image mapped to
this repository, parsed by the `mvimpute` command's own parser (click's `make_context`, nothing
runs); a file given to `--config` loads as that command's job config and one given to `--space`
as a search space for the model."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml
from commandlines import ROOT, CommandLineError, parse_command_line

K8S = ROOT / "k8s"


def _render():
    spec = importlib.util.spec_from_file_location("_k8s_render", K8S / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


APP_DIR = _render().APP_DIR  # where the image keeps jobs/, serve/ and tune_spaces/


def _entrypoint_patches(ops, where: str) -> list[tuple[str, str]]:
    if not isinstance(ops, list):
        return []
    return [
        (where, op["value"])
        for op in ops
        if isinstance(op, dict) and op.get("op") in ("add", "replace") and op.get("path") == "/spec/entrypoint"
    ]


def manifest_entrypoints() -> list[tuple[str, str]]:
    """(where, entrypoint) of every RayJob and every JSON patch of an entrypoint under k8s/."""
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        rel = path.relative_to(ROOT).as_posix()
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "RayJob":
                found.append((f"{rel} ({doc['metadata']['name']})", doc["spec"]["entrypoint"]))
            elif isinstance(doc, dict) and doc.get("kind") == "Kustomization":
                for patch in doc.get("patches") or []:
                    if isinstance(patch.get("patch"), str):
                        found += _entrypoint_patches(yaml.safe_load(patch["patch"]), f"{rel} (inline patch)")
            else:
                found += _entrypoint_patches(doc, rel)
    return found


# Entry points their program refuses today, and why (strict: the mark goes when the program is fixed).
REFUSED: dict[str, str] = {}  # entrypoints the command would refuse today, with the reason


def _cases() -> list:
    return [
        pytest.param(where, entrypoint, id=where, marks=[pytest.mark.xfail(reason=REFUSED[where], strict=True)])
        if where in REFUSED
        else pytest.param(where, entrypoint, id=where)
        for where, entrypoint in ENTRYPOINTS
    ]


ENTRYPOINTS = manifest_entrypoints()


def in_repo(arg: str) -> str:
    """A path inside the image (APP_DIR/...) as the same path in this repository."""
    if arg.startswith(APP_DIR + "/"):
        return str(ROOT / arg[len(APP_DIR) + 1 :])
    if arg.startswith("--") and "=" + APP_DIR + "/" in arg:
        flag, value = arg.split("=", 1)
        return f"{flag}={in_repo(value)}"
    return arg


def load_space(path, model):
    try:
        from mvimpute.engine.search import load_space
    except ImportError:
        from mvimpute.sweep import load_space
    return load_space(path, model)


def test_every_ray_job_has_an_entrypoint():
    jobs = [where for where, _ in ENTRYPOINTS if where.startswith("k8s/jobs/base/")]
    assert len(jobs) == 3, jobs
    patches = [where for where, _ in ENTRYPOINTS if re.match(r"k8s/jobs/(dev|gpu)/train/", where)]
    assert len(patches) == 2, "the environments' train patches"


@pytest.mark.parametrize(("where", "entrypoint"), _cases())
def test_rayjob_entrypoint_parses_and_its_files_load(where, entrypoint):
    from mvimpute.config import TrainJobConfig, TuneJobConfig, load_job_config

    argv = [in_repo(a) for a in shlex.split(entrypoint)]
    for arg in argv:
        assert not arg.startswith(APP_DIR), f"{where}: {arg} is not in this repository"
    try:
        parsed = parse_command_line(argv)
    except CommandLineError as err:
        pytest.fail(f"{where}: the job would refuse its entrypoint: {err}")
    assert parsed.command in ("train", "tune", "impute"), f"{where}: runs {parsed.program}, not a job"
    params = parsed.params
    kind = {"train": TrainJobConfig, "tune": TuneJobConfig}.get(parsed.command)
    overrides = list(params.get("overrides") or [])
    if params.get("config") is not None:
        assert kind is not None, f"{where}: {parsed.command} takes no job config"
        try:
            job = load_job_config(Path(params["config"]), overrides, kind=kind)
        except ValueError as err:
            pytest.fail(f"{where}: --config {params['config']} is not a {kind.__name__}: {err}")
    elif kind is not None:
        job = load_job_config(None, overrides, kind=kind)
    if params.get("space") is not None:
        model = params.get("model") or job.model
        try:
            load_space(Path(params["space"]), model)
        except ValueError as err:
            pytest.fail(f"{where}: --space {params['space']} is not a search space for {model}: {err}")
