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
    (created with its indexes if new). ``kwargs`` go to ``MongoDbGraphDatabase``."""
    from marlseg.db import DbError, MongoDbGraphDatabase

    uri = uri or configured_uri(config)
    if uri is None:
        raise MarlsegError("db", "no server: open the RAG inside graph_service(config)")
    try:
        return MongoDbGraphDatabase(uri, config.db.name, mode="r+", **kwargs)
    except DbError as e:
        raise MarlsegError("db", str(e)) from None


class RagStage(BlockwiseStage):
    """A blockwise stage whose workers read and write the RAG.

    The scheduler makes sure a server runs while the stage runs (:func:`graph_service`); the
    workers get its live URI in their config and open the RAG once each (:meth:`init_worker`
    sets ``self.rag``)."""

    _live_uri: str | None = None

    def check(self) -> None:
        super().check()
        check_graph_db(self.config)

    @contextlib.contextmanager
    def services(self) -> Iterator[None]:
        with graph_service(self.config) as uri:
            self._live_uri = uri
            try:
                yield
            finally:
                self._live_uri = None

    def worker_config(self) -> Config:
        config = super().worker_config()
        # only the embedded server's URI is written out: a configured one is in the config
        # already, and one from the environment (maybe with a password) reaches the workers
        # through their inherited environment, never through a file
        if self._live_uri is not None and configured_uri(self.config) is None:
            config = config.model_copy(
                update={"db": config.db.model_copy(update={"uri": self._live_uri})}
            )
        return config

    def open_rag(self, **kwargs: Any) -> Any:
        """The RAG on the live URI (scheduler side, inside ``services``) or the configured
        one (workers, whose config carries the live URI)."""
        return open_rag(self.config, self._live_uri, **kwargs)

    def init_worker(self) -> None:
        self.rag = open_rag(self.config)
