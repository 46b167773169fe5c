"""A JSON call to a served endpoint, shared by the serving and monitoring tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def call(base: str, path: str, body=None, raw: bytes | None = None):
    """(status, JSON reply) of GET `base + path`, or POST of `body` as JSON (or of `raw` bytes)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
