"""The one error type of the RAG store.

Everything a user can fix about the database (server unreachable, wrong password, a database
written by another schema version, a write the server refused) is raised as :class:`DbError`
with a one-line message that names the server with its password masked and says what to do.
It is a :class:`~marlseg.errors.MarlsegError`, so the command line prints it as
``error: db: <message>`` and exits 2, whichever stage met it.
"""

from __future__ import annotations

from marlseg.errors import MarlsegError


class DbError(MarlsegError):
    """A database problem the user can act on; ``str(err)`` is exactly one line."""

    def __init__(self, message: str) -> None:
        super().__init__("db", message)
        # one line, always: a wrapped driver message may carry newlines
        self.message = self.what

    def __str__(self) -> str:
        return self.message
