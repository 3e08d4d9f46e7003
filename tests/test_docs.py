"""The README is part of the contract: quick start, CI command, report columns, CLI options."""

from __future__ import annotations

import re
from pathlib import Path

from klingflow.app.cli import build_parser
from klingflow.report.schema import REPORT_SCHEMA, SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _quick_start() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "one fenced bash block under Quick start"
    return [line for line in blocks[0].splitlines() if line.strip()]


def test_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    """Exactly two commands; .ci/run ends with the test command, verbatim."""
    commands = _quick_start()
    assert len(commands) == 2
    assert "klingflow demo" in commands[0]
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci_lines[-1] == commands[1]


def test_every_report_column_is_documented_with_its_type() -> None:
    """Each REPORT_SCHEMA column has a row in the README's schema table, and the version is stated."""
    documented = dict(re.findall(r"^\| (\w+) \| ([^|]+) \|", README, flags=re.M))
    for field in REPORT_SCHEMA:
        assert field.name in documented, f"README lacks report column {field.name}"
    assert f"`schema_version` **{SCHEMA_VERSION}**" in README


def test_every_run_option_is_documented() -> None:
    """Each `klingflow run` option appears in the README."""
    parser = build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    options = [s for action in run._actions for s in action.option_strings if s.startswith("--") and s != "--help"]
    missing = [o for o in options if f"`{o}`" not in README]
    assert not missing, f"undocumented options: {missing}"


def test_every_reconciliation_field_is_documented() -> None:
    """Each RECONCILIATION_SCHEMA field is named in the README's reconciliation table."""
    from klingflow.report.reconcile import RECONCILIATION_SCHEMA

    table = README.split("### Reconciliation with fal's bill", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| ")]
    named = {name.strip() for row in rows for name in row.split(",")}
    assert set(RECONCILIATION_SCHEMA.names) <= named, set(RECONCILIATION_SCHEMA.names) - named


def test_every_prefect_server_start_in_the_readme_turns_telemetry_off() -> None:
    """Nothing here reaches the internet, and a local server's users rarely want telemetry."""
    starts = [line for line in README.splitlines() if "prefect server start --" in line]
    assert starts and all("PREFECT_SERVER_ANALYTICS_ENABLED=false" in line for line in starts)
