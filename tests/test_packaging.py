"""What the distribution installs and how the endpoint is found: only the `mvimpute` package (no
generic top-level `serve`), no library module reaching for the repository's folders, and
serve/config.yaml naming the package's app and the real default tracking store."""

from __future__ import annotations

import ast
import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mvimpute"


def test_the_distribution_installs_only_the_mvimpute_package():
    from setuptools import find_packages

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(where=str(ROOT), include=find["include"], exclude=find.get("exclude", ()))
    assert "mvimpute" in packages
    assert {p.split(".")[0] for p in packages} == {"mvimpute"}, packages
    top_level = metadata.distribution("mvimpute").read_text("top_level.txt")
    if top_level is not None:  # the installed distribution's own list (reinstall after changing pyproject)
        assert top_level.split() == ["mvimpute"], top_level


def test_no_library_module_imports_serve_or_changes_sys_path():
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                names = []
            assert not [n for n in names if n.split(".")[0] == "serve"], f"{path.relative_to(ROOT)} imports serve"
            is_sys_path = isinstance(node, ast.Attribute) and node.attr == "path"
            is_sys_path = is_sys_path and isinstance(node.value, ast.Name) and node.value.id == "sys"
            assert not is_sys_path, f"{path.relative_to(ROOT)}:{node.lineno} touches sys.path"


def test_mvimpute_serve_forwards_only_the_uris(monkeypatch):
    from mvimpute.cli_serving import _forwarded_env

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    assert _forwarded_env() == {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}


def test_serve_config_builds_the_package_app():
    from ray import serve

    (app,) = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())["applications"]
    module, attr = app["import_path"].split(":")
    assert module == "mvimpute.endpoint"
    import mvimpute.endpoint

    assert isinstance(getattr(mvimpute.endpoint, attr)(app.get("args") or {}), serve.Application)


def test_serve_config_names_the_real_default_tracking_store():
    from mvimpute.registry import DEFAULT_TRACKING_URI

    text = (ROOT / "serve" / "config.yaml").read_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("tracking_uri:"))
    assert line.split("#", 1)[1].strip() == f"null: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI}"
    assert set(re.findall(r"sqlite:///\S+", text)) == {DEFAULT_TRACKING_URI}
