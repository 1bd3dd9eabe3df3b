"""Atomic files: the one home of "write to a temporary name, then rename".

A reader of the path sees the old content or the new one, never half of one; a
crash mid-write leaves the old file (and a ``.tmp-<pid>`` sibling) behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterator


def _tmp_of(path: Path) -> Path:
    # Host and pid: two hosts sharing the filesystem (the nightly lock) never share a temporary name.
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: <write tmp>``: ``tmp`` replaces ``p`` when the block ends
    without an exception (the folder is created); on an exception ``tmp`` is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_of(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, body: Any, default: Callable[[Any], Any] | None = float, **dumps: Any) -> Path:
    return atomic_write_text(path, json.dumps(body, default=default, **dumps))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
