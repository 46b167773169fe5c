"""Files that appear whole or not at all: written beside their target, renamed into place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


class AtomicFile:
    """A temporary file beside `path` (`.tmp`), renamed onto `path` by `commit`, removed by `discard`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` into a temporary file beside `path`, then the rename; nothing left on failure."""
    file = AtomicFile(path)
    try:
        write(file.tmp)
        file.commit()
    except BaseException:
        file.discard()
        raise
    return file.path


__all__ = ["AtomicFile", "atomic_write"]
