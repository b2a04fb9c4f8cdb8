"""The RAG store: MongoDB graph database, connection helpers and the embedded server.

``from marlseg.db import MongoDbGraphDatabase, open_graph_db, DbError`` is all a stage needs;
see :mod:`marlseg.db.graph` for the schema and the ownership rule.
"""

from .connection import ENV_URI, connect, mask_uri, resolve_uri
from .errors import DbError
from .graph import MongoDbGraphDatabase
from .schema import SCHEMA_VERSION
from .server import EmbeddedServer, open_graph_db

__all__ = [
    "ENV_URI",
    "SCHEMA_VERSION",
    "DbError",
    "EmbeddedServer",
    "MongoDbGraphDatabase",
    "connect",
    "mask_uri",
    "open_graph_db",
    "resolve_uri",
]
