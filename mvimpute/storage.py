"""Paths that may be URIs: a local path or `s3://bucket/key` (any URI pyarrow's filesystems open),
read and written through `pyarrow.fs`, so that one code path serves a laptop and object storage.

An S3-compatible endpoint (MinIO, moto) comes from the standard AWS environment variables
(`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`), credentials likewise; pyarrow reads them itself.
"""

from __future__ import annotations

from pathlib import Path


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def filesystem(path: str | Path):
    """(pyarrow filesystem, path inside it); a local path is made absolute."""
    import pyarrow.fs as pafs

    text = str(path) if is_uri(path) else str(Path(path).resolve())
    try:
        return pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as err:
        raise ValueError(f"{text!r}: cannot open its storage ({err})") from None


def join(base: str | Path, *parts: str) -> str:
    """`base/part/...` for a URI or a local path."""
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def exists(path: str | Path) -> bool:
    """Whether a file or folder (a prefix holding objects) is at `path`. A bucket or server that cannot
    be reached is a `ValueError` naming the URI, not a quiet False."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    try:
        info = fs.get_file_info(inner)
    except OSError as err:
        raise ValueError(f"{str(path)!r}: {err}") from None
    return info.type != pafs.FileType.NotFound


def read_text(path: str | Path) -> str:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read().decode()


def write_text(path: str | Path, text: str) -> None:
    """Write a small text file whole: an object store's PUT is atomic, a local file is renamed into place."""
    if not is_uri(path):
        from .files import atomic_write

        atomic_write(path, lambda tmp: tmp.write_text(text))
        return
    fs, inner = filesystem(path)
    with fs.open_output_stream(inner) as f:
        f.write(text.encode())


__all__ = ["exists", "filesystem", "is_uri", "join", "read_text", "write_text"]
