"""Connecting to MongoDB: which URI, a quick reachability check, and never a password in a log.

The URI comes from the config (``db.uri``), else the environment (``MARLSEG_MONGODB_URI``), else
nobody (the caller then starts an embedded server, see :mod:`marlseg.db.server`). URIs carry
credentials, and they end up in log lines, error messages and exception chains; every place in
``marlseg.db`` that shows a URI shows :func:`mask_uri` of it, and every driver message we pass
on goes through :func:`redact` first.

Failures become :class:`~marlseg.db.errors.DbError` with one line that names the server and says
what to do, because a driver traceback ("ServerSelectionTimeoutError ... Topology Description
...") tells a user neither.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any
from urllib.parse import unquote

from pymongo import MongoClient
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    InvalidURI,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from .errors import DbError

logger = logging.getLogger(__name__)

ENV_URI = "MARLSEG_MONGODB_URI"
"""Environment variable consulted when the config gives no ``db.uri``."""

DEFAULT_TIMEOUT_MS = 5000
"""Server selection / connect timeout. Short on purpose: an unreachable server should fail a
stage in seconds, not after the driver's default 30 s."""

FIX_HINT = "fix db.uri / " + ENV_URI

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>.*)$", re.S)
_HOSTS = re.compile(r"^[\w.\-:,\[\]%]*$")
_SECRET_PARAM = re.compile(r"(?i)([?&;][^=&;]*(?:password|secret|token)[^=&;]*=)[^&;]*")


def resolve_uri(uri: str | None = None) -> str | None:
    """The explicit ``uri`` (the config's ``db.uri``) if given, else ``$MARLSEG_MONGODB_URI``,
    else ``None`` (meaning: use an embedded server)."""
    if uri:
        return uri
    return os.environ.get(ENV_URI) or None


def mask_uri(uri: str) -> str:
    """``uri`` with its password replaced by ``***`` (user name and hosts kept, so a message
    still says *where*). Secret-looking query parameters (``...password=``, ``...token=``) are
    masked too. If the user-info part cannot be told apart from the hosts (an unescaped ``@``
    or ``/`` in a password), everything before the hosts is masked: too much beats too little.
    """
    uri = str(uri)
    m = _SCHEME.match(uri)
    scheme, rest = (m.group("scheme"), m.group("rest")) if m else ("", uri)
    rest = _SECRET_PARAM.sub(r"\1***", rest)
    ats = [i for i, c in enumerate(rest) if c == "@"]
    if not ats:
        return scheme + rest
    for at in reversed(ats):
        after = re.split(r"[/?]", rest[at + 1 :], maxsplit=1)[0]
        if _HOSTS.match(after):
            user, sep, _ = rest[:at].partition(":")
            if "/" in user or "?" in user:  # not a user name: mask it all
                return f"{scheme}***@{rest[at + 1 :]}"
            return f"{scheme}{user}{':***' if sep else ''}@{rest[at + 1 :]}"
    return f"{scheme}***@{rest[ats[-1] + 1 :]}"


def _password(uri: str) -> str | None:
    m = _SCHEME.match(uri)
    rest = m.group("rest") if m else uri
    at = rest.rfind("@")
    if at < 0:
        return None
    _, sep, pw = rest[:at].partition(":")
    return pw if sep and pw else None


def redact(text: Any, uri: str) -> str:
    """``text`` (e.g. a driver error message) on one line with ``uri``'s password removed, in
    the raw and the percent-decoded spelling, and any copy of ``uri`` itself masked."""
    out = str(text)
    out = out.replace(uri, mask_uri(uri))
    pw = _password(uri)
    if pw:
        for spelling in {pw, unquote(pw)}:
            if spelling:
                out = out.replace(spelling, "***")
    return " ".join(out.split())


def _short_reason(exc: BaseException, uri: str) -> str:
    """The useful head of a driver error: ``localhost:1: [Errno 111] Connection refused``
    rather than the topology dump that follows it."""
    text = str(exc).split(", Timeout:")[0].split(", full error:")[0]
    text = re.sub(r"\s*\(configured timeouts:[^)]*\)", "", text)
    text = text.split("Topology Description")[0].strip(" ,")
    text = redact(text, uri)
    return text[:200]


def connect(
    uri: str,
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    app_name: str = "marlseg",
    **client_kwargs: Any,
) -> MongoClient:
    """A client on ``uri`` whose server has answered a ``ping``.

    Raises :class:`DbError` (one line, password masked, names the host) if the URI is invalid,
    the server does not answer within ``timeout_ms``, or authentication fails. Checking here,
    once, means later failures are real mid-run failures rather than configuration mistakes.
    """
    masked = mask_uri(uri)
    try:
        client: MongoClient = MongoClient(
            uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            appname=app_name,
            **client_kwargs,
        )
    except (InvalidURI, ConfigurationError, ValueError, TypeError) as e:
        raise DbError(
            f"invalid MongoDB URI {masked} ({_short_reason(e, uri)}): {FIX_HINT}"
        ) from None
    try:
        client.admin.command("ping")
    except ServerSelectionTimeoutError as e:
        client.close()
        raise DbError(
            f"cannot reach MongoDB at {masked} (timed out after {timeout_ms / 1000:g} s: "
            f"{_short_reason(e, uri)}): start mongod or {FIX_HINT}"
        ) from None
    except OperationFailure as e:
        client.close()
        if e.code in (18, 13) or "auth" in str(e).lower():
            raise DbError(
                f"authentication failed for MongoDB at {masked} ({_short_reason(e, uri)}): "
                f"check the user name and password in db.uri / {ENV_URI}"
            ) from None
        raise DbError(f"MongoDB at {masked} refused ping ({_short_reason(e, uri)})") from None
    except PyMongoError as e:
        client.close()
        raise DbError(
            f"cannot talk to MongoDB at {masked} ({_short_reason(e, uri)}): "
            f"check the server or {FIX_HINT}"
        ) from None
    logger.debug("connected to MongoDB at %s", masked)
    return client


def db_error(action: str, uri: str, exc: BaseException) -> DbError:
    """A :class:`DbError` for a failure *during* work (after :func:`connect` succeeded): what
    we were doing, where, and the masked driver reason."""
    if isinstance(exc, ConnectionFailure):
        hint = "the server went away; restart it and rerun (finished blocks are kept)"
    elif isinstance(exc, OperationFailure) and exc.code in (13, 18):
        hint = f"check the user name, password and roles in db.uri / {ENV_URI}"
    else:
        hint = "see the server log"
    return DbError(
        f"{action} failed on MongoDB at {mask_uri(uri)}: {_short_reason(exc, uri)}; {hint}"
    )
