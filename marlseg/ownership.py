"""Which run a RAG belongs to, so that no run can damage another's graph.

A run is its ``run.dir``: the first stage that needs it writes ``run.dir/run_id.json``, a
random id plus the directory's absolute path, once (created atomically; every later stage and
worker reads the same id). The RAG's meta document records the id and directory of the run
that first opened it (``owner``). Opening a RAG owned by another run is refused in one line
naming the database and the owning run dir, *before* anything is cleared or written; the
owner itself (any stage, ``--restart`` included) opens it as before. A RAG written before
owners were recorded is claimed by the first run that opens it. A run dir that was deleted and
made again (same path, new id) takes over its predecessor's RAG, with a note: that run is gone.

Two run dirs never meet in one database by default: ``db.name`` defaults to a name derived
from the absolute ``run.dir`` (:func:`default_db_name`); the refusal guards the explicit names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

from marlseg.errors import ConfigError

RUN_ID_FILE = "run_id.json"
OWNER_FIELD = "owner"


def default_db_name(run_dir: str | os.PathLike[str]) -> str:
    """``marlseg_<run dir name>_<8 hex of its absolute path>``: readable, unique per run dir,
    and a valid MongoDB database name (at most 64 bytes, no ``/\\. "$``)."""
    path = Path(run_dir).expanduser().absolute()
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.name)[:32] or "run"
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"marlseg_{stem}_{digest}"


def run_identity(run_dir: str | os.PathLike[str]) -> dict[str, str]:
    """``{"id", "dir"}`` of the run in ``run_dir``, created on first use."""
    run_dir = Path(run_dir).expanduser().absolute()
    path = run_dir / RUN_ID_FILE
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".{RUN_ID_FILE}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps({"id": uuid.uuid4().hex, "dir": str(run_dir)}) + "\n")
        try:
            os.link(tmp, path)  # atomic and exclusive: of two racing stages, one id wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        ident = json.loads(path.read_text())
        return {"id": str(ident["id"]), "dir": str(ident.get("dir", run_dir))}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(str(path), f"unreadable run id ({e}); restore or delete it") from None


def claim(rag: Any, run_dir: str | os.PathLike[str]) -> None:
    """Make ``rag`` (a :class:`marlseg.db.MongoDbGraphDatabase`) this run's, or refuse.

    Unowned: this run claims it (one conditional update, so of two runs opening a fresh
    database at once exactly one wins, and the other is refused). Owned by this run: nothing
    to do. Owned by another run: :class:`ConfigError` on ``db.name``, nothing changed."""
    from marlseg.db import mask_uri
    from marlseg.db.schema import META_ID

    me = run_identity(run_dir)
    meta = rag.meta.find_one({"_id": META_ID}) or {}
    owner = meta.get(OWNER_FIELD)
    if owner is None and rag.mode != "r":
        rag.meta.update_one(
            {"_id": META_ID, OWNER_FIELD: {"$exists": False}}, {"$set": {OWNER_FIELD: me}}
        )
        owner = (rag.meta.find_one({"_id": META_ID}) or {}).get(OWNER_FIELD)
    if owner is None or owner.get("id") == me["id"]:
        return
    if owner.get("dir") == me["dir"]:
        # the owner's run dir was deleted and made again: its run is gone, this one is its
        # successor (02 starts afresh and clears the graph; later stages find no fragments)
        rag.meta.update_one(
            {"_id": META_ID, f"{OWNER_FIELD}.id": owner.get("id")}, {"$set": {OWNER_FIELD: me}}
        )
        now = (rag.meta.find_one({"_id": META_ID}) or {}).get(OWNER_FIELD) or {}
        if now.get("id") == me["id"]:
            print(
                f"note: db.name: database {rag.db_name!r} belonged to an earlier run in "
                f"{me['dir']} (its run id is gone); this run takes it over",
                file=sys.stderr,
            )
            return
        owner = now
    raise ConfigError(
        "db.name",
        f"database {rag.db_name!r} at {mask_uri(rag.uri)} belongs to the run in "
        f"{owner.get('dir')} (this run is {me['dir']}); nothing was changed: set another "
        "db.name (or remove it: the default is one database per run.dir), or drop that "
        "database if its run is gone",
    )
