"""docs/architecture.md names every module, and its config table is the generated one."""

from __future__ import annotations

import re
from pathlib import Path

from marlseg.config.reference_table import sections_markdown

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("marlseg", "networks", "gp_pipelines", "db")


def test_every_module_is_named():
    text = DOC.read_text()
    missing = []
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.name in ("__init__.py", "__main__.py") or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT).as_posix()
            package = path.parent.relative_to(ROOT).as_posix() + "/"
            # named by its path, or by its file name in the paragraph of its package
            if rel in text:
                continue
            paragraphs = [p for p in text.split("\n\n") if package in p]
            if not any(re.search(rf"`{re.escape(path.name)}`", p) for p in paragraphs):
                missing.append(rel)
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_config_table_is_generated():
    text = DOC.read_text()
    table = text.split("<!-- sections table: begin -->\n")[1].split("<!-- sections table: end -->")[
        0
    ]
    assert table.strip() == sections_markdown().strip(), (
        "regenerate the table: marlseg.config.reference_table.sections_markdown()"
    )
