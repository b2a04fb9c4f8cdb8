"""The module layout's rules, read from the source with ``ast`` (nothing is imported).

* A stage module imports no other stage module: what stages share lives in
  ``marlseg.stages.common`` (stage-side) or in a library module.
* A library module imports no stage, except the few that exist to dispatch to stages by name.
* No module of the packages is over 600 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "marlseg": "marlseg",
    "networks": "marlseg.networks",
    "gp_pipelines": "marlseg.gp_pipelines",
    "db": "marlseg.db",
}
"""Source folder -> the package it installs as (see setup.cfg)."""
STAGES_DIR = ROOT / "marlseg" / "stages"
STAGE_SHARED = {"marlseg.stages", "marlseg.stages.common"}
"""What a stage module may import from ``marlseg.stages``: the registry and the shared code."""

DISPATCHERS = {
    "marlseg/cli.py": "the command line builds a stage's parser and runs it by name",
    "marlseg/worker.py": "a worker process runs the blocks of the stage it is named",
    "marlseg/chain.py": "the chain runs the registered stages in order (CHAIN)",
    "marlseg/blockwise.py": "a blockwise stage names itself by its registry key for its workers",
    "marlseg/config/reference_table.py": "docs/architecture.md's table names each section's stage",
}
"""Library modules that may import the registry ``marlseg.stages`` (not a stage module), each
with why."""

MAX_LINES = 600


def modules() -> list[tuple[str, Path]]:
    """``(dotted module name, path)`` of every module of the packages."""
    out = []
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out.append((".".join([package, *parts]), path))
    return out


def imports(name: str, path: Path) -> set[str]:
    """Every module ``path`` (module ``name``) imports, anywhere in it; ``from a import b``
    counts as importing ``a`` and ``a.b`` (``b`` may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                drop = node.level - 1 if is_package else node.level
                base = base[: len(base) - drop] if drop else base
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def is_stage_import(module: str) -> bool:
    return module == "marlseg.stages" or module.startswith("marlseg.stages.")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_stage_imports_another_stage():
    stage_modules = {n for n, p in modules() if p.parent == STAGES_DIR}
    bad = []
    for name, path in modules():
        if path.parent != STAGES_DIR or path.name in ("__init__.py", "common.py"):
            continue
        # ``marlseg.stages.x.f`` -> ``marlseg.stages.x``; ``marlseg.stages.get_stage`` is the
        # registry's, not a stage module
        named = {".".join(m.split(".")[:3]) for m in imports(name, path) if is_stage_import(m)}
        others = (named & stage_modules) - STAGE_SHARED - {name}
        bad += [f"{rel(path)} imports {m}" for m in sorted(others)]
    assert not bad, (
        "stages import each other (move what they share to marlseg/stages/common.py or a "
        "library module):\n" + "\n".join(bad)
    )


def test_library_modules_import_no_stage():
    stage_modules = {n for n, p in modules() if p.parent == STAGES_DIR} - {"marlseg.stages"}
    bad = []
    for name, path in modules():
        if path.is_relative_to(STAGES_DIR):
            continue
        found = {m for m in imports(name, path) if is_stage_import(m)}
        if rel(path) in DISPATCHERS:  # the registry only, never a stage module itself
            found = {".".join(m.split(".")[:3]) for m in found} & stage_modules
        bad += [f"{rel(path)} imports {m}" for m in sorted(found)]
    assert not bad, (
        "library modules import stages (move the function to a library module):\n" + "\n".join(bad)
    )


def test_dispatchers_exist():
    """The exceptions name real files (a stale entry would hide nothing but mislead)."""
    assert [p for p in DISPATCHERS if not (ROOT / p).is_file()] == []


def test_no_module_is_over_the_line_limit():
    over = []
    for _, path in modules():
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            over.append(f"{rel(path)}: {n} lines")
    assert not over, f"modules over {MAX_LINES} lines (split one idea out):\n" + "\n".join(over)
