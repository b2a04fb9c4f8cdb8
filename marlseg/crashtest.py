"""A crash-test hook for the resume tests, inert in normal runs.

Every blockwise stage calls :func:`maybe_die_for_test` in the middle of its block (after some
of the block's writes, before the others, or before the block is marked done), so that a test
can kill a real worker at a chosen point of real work and check that the re-run loses and
duplicates nothing.
"""

from __future__ import annotations

_blocks_seen = 0


def maybe_die_for_test(stage: str) -> None:
    """Crash-test hook, inert unless ``MARLSEG_TEST_KILL=<stage>:<n>:<marker file>`` is set:
    the worker SIGKILLs itself in the middle of its ``n``-th block (after some of the block's
    writes, before the others), once per run (the marker file, created atomically, records that
    it happened). Lets tests kill a worker at a chosen point of real work."""
    import os

    global _blocks_seen
    spec = os.environ.get("MARLSEG_TEST_KILL")
    if not spec:
        return
    name, n, marker = spec.split(":", 2)
    if name != stage:
        return
    _blocks_seen += 1
    if _blocks_seen != int(n):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
