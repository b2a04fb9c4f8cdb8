"""The ``agglomerate`` section (``03_agglomerate.py``). Imports only :mod:`marlseg.config.base`."""

from __future__ import annotations

from pydantic import field_validator

from marlseg.config.base import StageSection, check_block, check_context


class AgglomerateConfig(StageSection):
    merge_function: str = "mean"
    """waterz merge function (default chosen with ``workflows/tune.py``, docs/network.md):
    ``hist_quant_N`` (N = 10, 15, ..., 95), ``hist_quant_N_initmax``,
    ``mean``, ``max``, ``min``, or a waterz scoring-function type (table:
    ``marlseg.watershed.MERGE_FUNCTIONS``)."""
    block_shape: list[int] | None = None
    """Write block shape, nm; ``null``: ``fragments.block_shape``. A whole multiple of it, so
    every fragment (and the edges it owns) belongs to exactly one agglomeration block."""
    context: list[int] = [80, 80, 80]
    """Context read around each block, nm."""

    _v_block = field_validator("block_shape")(classmethod(lambda cls, v: check_block(v)))
    _v_context = field_validator("context")(classmethod(lambda cls, v: check_context(v)))
