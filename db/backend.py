"""What differs between the embedded SecantusDB server and a real mongod, decided once at open.

:meth:`Backend.probe` asks the server what it is and whether it runs transactions; the rest
of :mod:`marlseg.db` consults the one :class:`Backend` it returns instead of branching on the
server itself: how many ids go in one ``$in`` query, whether update chunks go in transactions
(and how large), whether a query on several fields is sent as is, and how a collection is
emptied. May import pymongo only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pymongo import MongoClient
from pymongo.collection import Collection

logger = logging.getLogger(__name__)

IN_CHUNK = 100
"""Ids per ``$in`` query on a real mongod (bounded request size)."""
IN_CHUNK_EMBEDDED = 20
"""Ids per ``$in`` query on the embedded server, whose ``$in`` cost grows faster than the
list: 300 ids as 30 queries of 10 took 0.29 s, as 3 of 100 0.77 s, as 1 of 300 1.8 s."""
TXN_OPS = 1000
"""Update statements per transaction (see ``Writer._bulk``): one commit per chunk, and a
chunk small enough to stay far from transaction time and size limits."""


@dataclass
class Backend:
    """The server's differences: ``embedded`` (the SecantusDB server), ``transactions``
    (updates are committed chunk by chunk in transactions), ``in_chunk`` (ids per ``$in``)."""

    embedded: bool
    transactions: bool
    in_chunk: int

    @classmethod
    def probe(
        cls, client: MongoClient, *, transactions: bool | None, in_chunk: int | None
    ) -> Backend:
        """What the server can do: the embedded SecantusDB server gets its own query and
        write shapes; transactions need a replica set member or a mongos. ``transactions``
        and ``in_chunk`` override what the server would get (``None``: decide here)."""
        embedded = "secantusVersion" in client.admin.command("buildInfo")
        if transactions is None:
            hello = client.admin.command("hello")
            transactions = "setName" in hello or hello.get("msg") == "isdbgrid"
        if in_chunk is None:
            in_chunk = IN_CHUNK_EMBEDDED if embedded else IN_CHUNK
        return cls(
            embedded=embedded, transactions=bool(transactions), in_chunk=in_chunk or IN_CHUNK
        )

    @property
    def multi_field_queries(self) -> bool:
        """Whether a query on several fields goes to the server as is. A real mongod answers
        it from a compound index; the embedded server's planner uses an index only for a
        query on a single field (a second field makes it scan the whole collection), so
        there the callers query one field and check the others themselves."""
        return not self.embedded

    def update_chunk(self, batch_ops: int) -> int:
        """Update statements sent at once: one transaction's worth, or one bulk request."""
        return TXN_OPS if self.transactions else batch_ops

    def no_transactions(self, where: str) -> None:
        """The server refused a transaction ("not supported here"): write without from now."""
        logger.info("%s: no transactions, writing without", where)
        self.transactions = False

    def empty(self, coll: Collection) -> None:
        """Remove every row of ``coll``. A real mongod drops the collection (instant); the
        embedded SecantusDB server drops row by row with a durable commit each (~20 ms per
        row, minutes for a real RAG) but deletes in batches, so there the rows are deleted
        and the collection and its indexes kept."""
        if self.embedded:
            coll.delete_many({})
        else:
            coll.drop()
