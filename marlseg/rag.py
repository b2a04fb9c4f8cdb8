"""The region adjacency graph (RAG) as the post-processing stages use it: one server, one URI.

Every stage that touches the RAG (fragments, agglomerate, segments, and later ones) needs the
same three things, and gets them here so that no stage repeats them:

* :func:`check_graph_db` — before anything is written, an explicitly configured server
  (``db.uri`` or ``MARLSEG_MONGODB_URI``) must answer; a one-line error otherwise.
* :func:`graph_service` — while a stage runs, a server is serving: the configured one, or an
  embedded one with its data under ``run.dir/db`` (reused if one is already serving there,
  stopped at the end only if this process started it). It yields the live URI.
* :class:`RagStage` — a blockwise stage whose workers connect to that live URI: its
  ``services()`` runs :func:`graph_service` and its ``worker_config()`` writes the URI into the
  workers' config as ``db.uri``, so a worker never starts a server of its own.

:func:`open_rag` opens the graph database (``marlseg.db.MongoDbGraphDatabase``) on a URI.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from marlseg.blockwise import BlockwiseStage
from marlseg.config import Config
from marlseg.errors import ConfigError, MarlsegError


def configured_uri(config: Config) -> str | None:
    """``db.uri``, else ``MARLSEG_MONGODB_URI``, else ``None`` (embedded server)."""
    from marlseg.db import resolve_uri

    return resolve_uri(config.db.uri)


def db_dir(config: Config) -> Path:
    """Where the embedded server keeps its data."""
    return Path(config.run.dir) / "db"


def _field(config: Config) -> str:
    from marlseg.db import ENV_URI

    return "db.uri" if config.db.uri else ENV_URI


def check_graph_db(config: Config, timeout_ms: int = 5000) -> None:
    """Fail early (one line, nothing written) if a configured server does not answer."""
    from marlseg.db import DbError, connect

    uri = configured_uri(config)
    if uri is None:
        return  # an embedded server is started when the stage runs
    try:
        connect(uri, timeout_ms=timeout_ms).close()
    except DbError as e:
        raise ConfigError(_field(config), str(e)) from None


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_reachable(config: Config, worker_type: str) -> None:
    """Cluster workers run on other nodes: an embedded server listening on the loopback
    address only would fail every block of theirs. Refused before anything is written."""
    if worker_type == "local" or configured_uri(config) is not None:
        return
    if config.db.bind in LOOPBACK:
        raise ConfigError(
            "db.bind",
            f"{worker_type} workers run on other nodes and cannot reach the embedded database "
            f"listening on {config.db.bind}: set db.bind to 0.0.0.0 (or this node's address), "
            "or db.uri to a MongoDB server they can reach",
        )


@contextlib.contextmanager
def graph_service(config: Config) -> Iterator[str]:
    """A MongoDB serving while the ``with`` block runs; yields its URI.

    The configured one (``db.uri`` / ``MARLSEG_MONGODB_URI``), or an embedded server over
    ``run.dir/db`` listening on ``db.bind``: reused if one already serves that directory (an
    earlier stage's, or one left by a killed run), and stopped at the end only if this call
    started it."""
    from marlseg.db import DbError, EmbeddedServer

    uri = configured_uri(config)
    if uri is not None:
        yield uri
        return
    server = EmbeddedServer(db_dir(config), host=config.db.bind)
    try:
        server.start()
    except DbError as e:
        raise MarlsegError("db", str(e)) from None
    try:
        yield server.uri
    finally:
        server.stop()  # a no-op unless this call started it


def open_rag(config: Config, uri: str | None = None, **kwargs: Any) -> Any:
    """The RAG ``config.db.name`` on ``uri`` (default: the configured URI), opened ``r+``
    (created with its indexes if new) and owned by this run (:mod:`marlseg.ownership`: a
    RAG of another run is refused). ``kwargs`` go to ``MongoDbGraphDatabase``."""
    from marlseg.db import DbError, MongoDbGraphDatabase
    from marlseg.ownership import claim

    uri = uri or configured_uri(config)
    if uri is None:
        raise MarlsegError("db", "no server: open the RAG inside graph_service(config)")
    try:
        rag = MongoDbGraphDatabase(uri, config.db.name, mode="r+", **kwargs)
    except DbError as e:
        raise MarlsegError("db", str(e)) from None
    try:
        claim(rag, config.run.dir)
    except BaseException:
        rag.close()
        raise
    return rag


def _has_secret(uri: str) -> bool:
    from marlseg.db import mask_uri

    return mask_uri(uri) != uri


class RagStage(BlockwiseStage):
    """A blockwise stage whose workers read and write the RAG.

    The scheduler makes sure a server runs while the stage runs (:func:`graph_service`); the
    workers get its live URI in their config and open the RAG once each (:meth:`init_worker`
    sets ``self.rag``)."""

    _live_uri: str | None = None

    def check(self) -> None:
        super().check()
        check_graph_db(self.config)
        check_reachable(self.config, self.workers.type)

    @contextlib.contextmanager
    def services(self) -> Iterator[None]:
        from marlseg.db import ENV_URI

        with graph_service(self.config) as uri:
            self._live_uri = uri
            open_rag(self.config, uri).close()  # another run's RAG: refused before prepare()
            # a URI with a password reaches the workers through their inherited environment
            # (local workers, srun --export=ALL, bsub -env all), never through a file
            saved = os.environ.get(ENV_URI)
            if _has_secret(uri):
                os.environ[ENV_URI] = uri
            try:
                yield
            finally:
                self._live_uri = None
                if saved is None:
                    os.environ.pop(ENV_URI, None)
                else:
                    os.environ[ENV_URI] = saved

    def worker_config(self) -> Config:
        config = super().worker_config()
        # the embedded server's URI is written out (no password); a password URI is left
        # out (see services) and the workers read it from MARLSEG_MONGODB_URI
        live = self._live_uri
        if live is not None:
            uri = None if _has_secret(live) else live
            config = config.model_copy(update={"db": config.db.model_copy(update={"uri": uri})})
        return config

    def open_rag(self, **kwargs: Any) -> Any:
        """The RAG on the live URI (scheduler side, inside ``services``) or the configured
        one (workers, whose config carries the live URI)."""
        return open_rag(self.config, self._live_uri, **kwargs)

    def init_worker(self) -> None:
        self.rag = open_rag(self.config)
