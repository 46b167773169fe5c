"""Every `mvimpute ...` and `python jobs/<job>.py ...` command line in README.md and docs/*.md (code
blocks and inline code) is one its program accepts: parsed by the program's own parser (click's
`make_context` for the `mvimpute` commands and the jobs that wrap them, `build_parser()` for an
argparse job), never run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from commandlines import (
    ROOT,
    CommandLineError,
    is_command_line,
    mvimpute_commands,
    parse_command_line,
    strip_env,
)

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
INLINE = re.compile(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)*)`(?!`)")
SHELL_OPERATORS = {"&&", "||", ";", "|"}

# Files the examples assume the reader has (a checkpoint from `fit`, their own table); the commands
# are parsed in a folder that holds them (empty) beside this repository's files.
EXAMPLE_FILES = ("jpvae.pt", "model.pt", "wide.parquet", "in.parquet")

# Command lines that cannot be parsed as written, and why.
SKIPPED: dict[str, str] = {}
NAMED: list[tuple[str, list[str]]] = []  # inline `mvimpute <command>`: checked to exist


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _commands(text: str) -> list[list[str]]:
    """The simple commands of a shell snippet (comments dropped, split at && ; | ||, and what
    follows `--` for `ray job submit ... -- python jobs/...`)."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote: not a shell line
        return []
    out, current = [], []
    for token in [*tokens, ";"]:
        if token in SHELL_OPERATORS:
            if current:
                out.append(current)
            current = []
        else:
            current.append(token)
    for argv in list(out):
        if "--" in argv and not is_command_line(argv):
            out.append(argv[argv.index("--") + 1 :])
    return out


def _is_doc_command(argv: list[str]) -> bool:
    return is_command_line(argv) and strip_env(argv) != ["mvimpute"]  # the bare name is the project's


def _names_a_command(argv: list[str]) -> bool:
    """`mvimpute tune`, `python jobs/tune.py` in prose: the command's name, not a command line."""
    argv = strip_env(argv)
    return len(argv) == 2 and not argv[1].startswith("-")


def doc_command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv) for each command line in the docs."""
    found = []
    for path in DOCS:
        text = path.read_text()
        name = path.relative_to(ROOT).as_posix()
        for block in FENCE.finditer(text):
            body, start = block.group(1), block.start(1)
            offset = 0
            for chunk in re.split(r"(?<!\\)\n", body.replace("\\\n", "\\\x00")):
                line = _line_of(text, start + offset)
                offset += len(chunk) + 1
                for argv in _commands(chunk.replace("\\\x00", " ")):
                    if _is_doc_command(argv):
                        found.append((f"{name}:{line}", argv))
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for span in INLINE.finditer(prose):
            for argv in _commands(" ".join(span.group(1).split())):
                if _is_doc_command(argv) and not _names_a_command(argv):
                    found.append((f"{name}:{_line_of(prose, span.start())}", argv))
                elif _is_doc_command(argv):
                    NAMED.append((f"{name}:{_line_of(prose, span.start())}", argv))
    return found


COMMAND_LINES = doc_command_lines()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with this repository's top-level files and the examples' own files."""
    folder = tmp_path_factory.mktemp("docs-cwd")
    for entry in ROOT.iterdir():
        if not entry.name.startswith("."):
            (folder / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for name in EXAMPLE_FILES:
        (folder / name).touch()
    return folder


def test_the_docs_have_command_lines():
    assert len(COMMAND_LINES) > 30
    assert any(argv[0] == "mvimpute" for _, argv in COMMAND_LINES)
    assert any("jobs/bench.py" in argv[1] for _, argv in COMMAND_LINES if argv[0] != "mvimpute")


@pytest.mark.parametrize(("where", "argv"), COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_doc_command_line_parses(where, argv, workdir, monkeypatch):
    line = shlex.join(argv)
    if line in SKIPPED:
        pytest.skip(SKIPPED[line])
    monkeypatch.chdir(workdir)
    try:
        parse_command_line(argv)
    except CommandLineError as err:
        pytest.fail(f"{where}: `{line}` is refused: {err}")


@pytest.mark.parametrize(("where", "argv"), NAMED, ids=[w for w, _ in NAMED])
def test_doc_command_name_exists(where, argv):
    argv = strip_env(argv)
    if argv[0] == "mvimpute":
        assert argv[1] in mvimpute_commands(), f"{where}: mvimpute has no command {argv[1]!r}"
    else:
        assert (ROOT / "jobs" / Path(argv[1]).name).is_file(), f"{where}: {argv[1]} is missing"


def test_a_refused_command_line_is_caught():
    with pytest.raises(CommandLineError, match="unexpected extra argument"):
        parse_command_line(shlex.split("python jobs/evaluate.py --models jpvae tae"))
    with pytest.raises(CommandLineError, match="(?i)no such option"):
        parse_command_line(shlex.split("mvimpute tune --epoch 3"))
    with pytest.raises(CommandLineError, match="invalid choice"):
        parse_command_line(shlex.split("python jobs/bench.py fit-times"))
