"""The one error type users see.

Every problem a user can fix (bad config, missing file, unreachable server, failed blocks) is
raised as a :class:`MarlsegError` carrying *where* (a config field path or a file) and *what*.
The CLI prints it as one line, ``error: <where>: <what>``, and exits with the error's code;
nothing else in the package prints tracebacks at users.
"""

from __future__ import annotations


class MarlsegError(Exception):
    """A user-facing error: one line, ``<where>: <what>``, and an exit code."""

    exit_code = 2

    def __init__(self, where: str | None, what: str, *, exit_code: int | None = None):
        self.where = where
        self.what = " ".join(str(what).split())  # one line, always
        if exit_code is not None:
            self.exit_code = exit_code
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what


class ConfigError(MarlsegError):
    """The config (or a file it names) is wrong. Raised before anything is written."""


class StageFailed(MarlsegError):
    """A stage ran but did not complete (blocks failed after their retries)."""

    exit_code = 1
