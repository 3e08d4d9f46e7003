"""CI's linters, run by the test suite: ruff, ruff format, the import-layer contracts, the fal edge."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SOURCES = ["klingflow", "flows", "tasks"]


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def test_ruff_check_is_clean() -> None:
    """`ruff check .` finds nothing."""
    result = _run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    """`ruff format --check .` would reformat nothing."""
    result = _run(str(BIN / "ruff"), "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_hold() -> None:
    """Every import-linter contract in pyproject.toml is kept."""
    result = _run(str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_lower_layer_importing_a_higher_one_is_caught(tmp_path: Path) -> None:
    """The contracts fail when the fal interface imports the CLI (a copy of the tree with one bad import)."""
    for name in SOURCES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    queue = tmp_path / "klingflow" / "fal" / "queue.py"
    queue.write_text(queue.read_text() + "\nfrom klingflow.app import cli  # noqa: E402, F401\n")
    result = subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(tmp_path), "PATH": str(BIN)},
        check=False,
    )
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "klingflow.fal.queue -> klingflow.app.cli" in result.stdout


HTTP_CLIENT = re.compile(r"httpx\.(Async)?Client\(|fal_client\.(Async|Sync)Client\(|[\"']Authorization[\"']")


def test_only_the_fal_interface_builds_http_clients_and_auth_headers() -> None:
    """No module outside klingflow/fal (and the simulator, which is the server side) builds either."""
    offenders = []
    for name in SOURCES:
        for path in (ROOT / name).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(("klingflow/fal/", "klingflow/simulator/")):
                continue
            offenders += [
                f"{rel}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1) if HTTP_CLIENT.search(line)
            ]
    assert offenders == []
