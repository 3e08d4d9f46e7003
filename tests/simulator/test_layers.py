"""The simulator's import contract: of klingflow it uses only the endpoint facts, errors and the prober."""

from __future__ import annotations

import ast
from pathlib import Path

import klingflow.simulator

ALLOWED = ("klingflow.simulator", "klingflow.endpoint", "klingflow.errors", "klingflow.media.probe")


def _klingflow_imports(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return {m for m in modules if m == "klingflow" or m.startswith("klingflow.")}


def test_simulator_imports_only_allowed_klingflow_modules():
    """Every klingflow import in klingflow/simulator is the simulator itself, endpoint, errors or media.probe."""
    package = Path(klingflow.simulator.__file__).parent
    found = {path.name: _klingflow_imports(path) for path in sorted(package.glob("*.py"))}
    offending = {
        name: sorted(m for m in mods if not any(m == a or m.startswith(a + ".") for a in ALLOWED))
        for name, mods in found.items()
    }
    assert {name: mods for name, mods in offending.items() if mods} == {}
    assert "fetch.py" in found and any(found.values())
