"""Small files written whole or not at all.

A run's bookkeeping files (``params.json``, a stage's ``worker_config.json``) are read by
later runs and by workers: a crash mid-write must leave the old file or the new one, never a
torn one. :func:`write_atomic` writes a temporary file beside the target, flushes it to disk
and renames it over the target (atomic on POSIX). ``private`` files are created ``0600``
from the start (not chmod-ed after: there is no moment at which others can read them).

:func:`file_digest` is the content hash fingerprints record for an input file (a checkpoint,
a LUT): a changed file invalidates what was computed from it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], text: str, *, private: bool = False) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if private:
            os.chmod(tmp, 0o600)  # the umask may only have narrowed it; make it exact
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_digest(path: str | os.PathLike[str]) -> str:
    """The first 16 hex digits of the file's SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
