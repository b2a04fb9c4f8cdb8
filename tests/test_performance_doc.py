"""docs/performance.md shows issue 20's figures as the benchmarks print them from the committed
JSON under docs/results (no number typed by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import chain_inline, postprocess_blocks, scale, segments_memory

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(
    "module, name",
    [
        (postprocess_blocks, "postprocess_blocks.json"),
        (chain_inline, "chain_inline_128.json"),
        (chain_inline, "chain_inline_128_eps.json"),
        (segments_memory, "segments_memory.json"),
        (scale, "scale_512_watershed.json"),
    ],
)
def test_tables_are_generated_from_committed_json(module, name):
    doc = (ROOT / "docs" / "performance.md").read_text()
    result = json.loads((ROOT / "docs" / "results" / name).read_text())
    assert module.markdown(result) in doc
