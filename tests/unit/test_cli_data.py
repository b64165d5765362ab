"""The data commands of the CLI without a server: an unreachable database is exit 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from prescaler.cli import EXIT_UNAVAILABLE, main

DATA = Path(__file__).parents[1] / "data"


def test_unreachable_database_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql+psycopg2://prescaler:prescaler@127.0.0.1:9/prescaler"
    assert main(["--database-url", url, "import", str(DATA / "trace_ok.csv")]) == EXIT_UNAVAILABLE
    assert "database unavailable while migrating the schema" in capsys.readouterr().err
