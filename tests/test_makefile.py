"""The Makefile's targets that run a job script pass it arguments the script accepts (`make -n`:
the commands are printed, nothing runs)."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest
from commandlines import ROOT, CommandLineError, is_command_line, parse_command_line


def make_commands(target: str, *variables: str) -> list[list[str]]:
    """The `mvimpute`/`python jobs/*.py` command lines `make -n target` prints."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not on PATH")
    out = subprocess.run(
        [make, "-n", "--no-print-directory", target, *variables], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"make -n {target} failed:\n{out.stderr}"
    lines = [shlex.split(ln) for ln in out.stdout.splitlines() if ln.strip()]
    return [argv for argv in lines if is_command_line(argv)]


@pytest.mark.parametrize(
    "variables",
    [(), ("BENCH=serve-latency --repeats 1 --requests 20",), ("BENCH=cli-startup --repeats 1",)],
    ids=["default", "serve-latency", "cli-startup"],
)
def test_make_bench_runs_a_benchmark_bench_py_accepts(variables):
    (argv,) = make_commands("bench", *variables)
    try:
        parsed = parse_command_line(argv)
    except CommandLineError as err:
        pytest.fail(f"make bench {' '.join(variables)} runs a command jobs/bench.py refuses: {err}")
    assert parsed.params.get("bench"), f"make bench runs no benchmark: {shlex.join(argv)}"
    if variables:
        assert parsed.params["bench"] == variables[0].split("=", 1)[1].split()[0]


def test_make_demo_runs_the_demo_job():
    (argv,) = make_commands("demo")
    assert argv[-1].endswith("jobs/demo.py")
