"""Command lines (`mvimpute ...`, `python jobs/<job>.py ...`) parsed by the programs' own parsers,
without running them: the click commands behind the `mvimpute` app (`make_context`, which checks
option names, values, ranges and paths but calls no command), and `build_parser()` of an argparse
job script. Used by the tests that check the README, the docs, the Makefile and the k8s manifests.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"

ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PYTHON = re.compile(r"^(\S*/)?python(3(\.\d+)?)?$")
JOB_SCRIPT = re.compile(r"^(\S*/)?jobs/[A-Za-z0-9_]+\.py$")
HELP = {"--help", "-h"}


class CommandLineError(ValueError):
    """A command line its program would refuse, with the program's own message."""


@dataclass
class Parsed:
    program: str  # "mvimpute train", "python jobs/bench.py"
    command: str | None  # the `mvimpute` command the line runs (a job wrapper's too), else None
    params: dict = field(default_factory=dict)


def strip_env(argv: list[str]) -> list[str]:
    """Drop leading `NAME=value` assignments (`OMP_NUM_THREADS=1 mvimpute ...`)."""
    i = 0
    while i < len(argv) and ENV_ASSIGNMENT.match(argv[i]):
        i += 1
    return argv[i:]


def is_command_line(argv: list[str]) -> bool:
    """`mvimpute ...` or `python jobs/<job>.py ...` (environment assignments before it allowed)."""
    argv = strip_env(argv)
    if not argv:
        return False
    if argv[0] == "mvimpute":
        return True
    return len(argv) > 1 and bool(PYTHON.match(argv[0])) and bool(JOB_SCRIPT.match(argv[1]))


# ----------------------------------------------------------------------------- the mvimpute app


def mvimpute_commands() -> dict:
    """The `mvimpute` app's commands as click commands, built afresh."""
    import typer

    from mvimpute.cli import app

    return dict(typer.main.get_command(app).commands)


def parse_click(cmd, prog: str, args: list[str]) -> dict:
    """`cmd.make_context` on `args`: the parameters as the command would get them; nothing runs."""
    try:
        ctx = cmd.make_context(prog, list(args), resilient_parsing=False)
    except Exception as err:
        if hasattr(err, "format_message"):  # click's (or typer's own click's) usage errors
            raise CommandLineError(f"{prog} {shlex.join(args)}: {err.format_message()}") from None
        raise
    return dict(ctx.params)


def parse_mvimpute(name: str, args: list[str], prog: str | None = None) -> Parsed:
    prog = prog or f"mvimpute {name}"
    commands = mvimpute_commands()
    if name not in commands:
        raise CommandLineError(f"{prog}: no such command (mvimpute has {', '.join(sorted(commands))})")
    if HELP & set(args):
        return Parsed(prog, name)  # asks for help only: the command exists, there is nothing else to run
    return Parsed(prog, name, parse_click(commands[name], prog, args))


# ----------------------------------------------------------------------------- job scripts


@contextlib.contextmanager
def _restored_sys_path():
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def load_job(script: Path):
    """Import a job script as a module (its `__main__` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"_job_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    with _restored_sys_path():
        spec.loader.exec_module(module)
    return module


def job_entry(script: Path) -> tuple[str, object]:
    """How a job script parses its arguments, read from its source: ("mvimpute", name) for a
    `run_command(name, ...)` wrapper; ("typer", function) for `typer.run(function)`; ("argparse",
    build_parser) for a script with a `build_parser()`."""
    tree = ast.parse(script.read_text())
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.update({alias.asname or alias.name: node.module for alias in node.names})
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        called = ast.unparse(node.func)
        if called.split(".")[-1] == "run_command" and node.args and isinstance(node.args[0], ast.Constant):
            return "mvimpute", node.args[0].value
        if called == "typer.run" and node.args and isinstance(node.args[0], ast.Name):
            name = node.args[0].id
            if name in imported:
                return "typer", getattr(importlib.import_module(imported[name]), name)
            return "typer", getattr(load_job(script), name)
    if any(isinstance(n, ast.FunctionDef) and n.name == "build_parser" for n in tree.body):
        return "argparse", load_job(script).build_parser
    raise CommandLineError(
        f"{script.relative_to(ROOT)}: cannot tell how it parses its arguments "
        "(no run_command(...), typer.run(...) or build_parser())"
    )


def parse_argparse(parser: argparse.ArgumentParser, prog: str, args: list[str]) -> dict:
    parser.prog = prog
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            namespace = parser.parse_args(list(args))
    except SystemExit as stop:
        raise CommandLineError(f"{prog} {shlex.join(args)}: {err.getvalue().strip()} (exit {stop.code})") from None
    return vars(namespace)


def parse_job(script: Path, args: list[str], prog: str | None = None) -> Parsed:
    prog = prog or f"python jobs/{script.name}"
    if not script.is_file():
        raise CommandLineError(f"{prog}: no such file {script}")
    kind, entry = job_entry(script)
    if kind == "mvimpute":
        return parse_mvimpute(entry, args, prog)
    if HELP & set(args):
        return Parsed(prog, None)
    if kind == "typer":
        import typer

        app = typer.Typer(add_completion=False)
        app.command()(entry)
        command = typer.main.get_command(app)
        return Parsed(prog, entry.__name__, parse_click(command, prog, args))
    return Parsed(prog, None, parse_argparse(entry(), prog, args))


def parse_command_line(argv: list[str], jobs: Path = JOBS) -> Parsed:
    """Parse `mvimpute <command> ...` or `python [.../]jobs/<job>.py ...` (`jobs/<job>.py` taken from
    `jobs`); raises CommandLineError with the parser's message when the program would refuse it."""
    argv = strip_env(list(argv))
    if not is_command_line(argv):
        raise CommandLineError(f"not an mvimpute or jobs/*.py command line: {shlex.join(argv)}")
    if argv[0] == "mvimpute":
        if len(argv) == 1:
            raise CommandLineError("mvimpute: no command")
        if argv[1].startswith("-"):
            if HELP & {argv[1]}:
                return Parsed("mvimpute", None)
            raise CommandLineError(f"mvimpute: options go after the command ({shlex.join(argv)})")
        return parse_mvimpute(argv[1], argv[2:])
    script = jobs / Path(argv[1]).name
    return parse_job(script, argv[2:])
