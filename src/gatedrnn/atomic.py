"""Writing a file so that it is never seen half-written: results, checkpoints, reports and
downloads all go through :func:`write_atomic` (JSON documents through :func:`write_json`)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomic", "write_json"]


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    If ``write`` raises (or the process is interrupted), the temporary file is removed and
    ``path`` keeps its previous content, if any.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: object, indent: int = 1) -> Path:
    """``data`` as JSON at ``path``, atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=indent) + "\n"))
