"""The data commands of the CLI (`migrate`, `simulate`, `import`) against a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from prescaler import db
from prescaler.cli import EXIT_INPUT, main

DATA = Path(__file__).parents[1] / "data"


def _rows(engine: Engine, service: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(db.traffic_log)
                                .where(db.traffic_log.c.service == service)).scalar_one())


def test_migrate_reports_revision(make_database, capsys: pytest.CaptureFixture[str]) -> None:
    url = make_database(revision="0001")
    assert main(["--database-url", url, "migrate"]) == 0
    assert f"schema at revision {db.head_revision()}" in capsys.readouterr().out


def test_simulate(pg_url: str, engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--database-url", pg_url, "simulate", "--days", "1", "--step", "5m", "--seed", "3",
            "--start", "2024-03-04T00:00:00", "--service", "cli-sim"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "simulated 1,440 rows" in out and "cli-sim" in out and "2024-03-04 00:00" in out
    assert _rows(engine, "cli-sim") == 288 * 5
    assert main(args) == 0  # re-running does not duplicate
    assert _rows(engine, "cli-sim") == 288 * 5


def test_import_and_reimport(pg_url: str, engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--database-url", pg_url, "import", str(DATA / "trace_ok.csv"), "--service", "cli-imp"]
    assert main(args) == 0
    assert "read 6 rows" in capsys.readouterr().out and _rows(engine, "cli-imp") == 5
    assert main(args) == 0
    assert "0 written, 5 already present" in capsys.readouterr().out
    assert _rows(engine, "cli-imp") == 5


@pytest.mark.parametrize(("name", "message"), [
    ("bad_duplicate.csv", "line 5: duplicate timestamp"),
    ("bad_negative.csv", "line 4: negative request count"),
    ("bad_empty.csv", "empty file"),
])
def test_bad_import_exits_2_and_writes_nothing(pg_url: str, engine: Engine,
                                                capsys: pytest.CaptureFixture[str], name: str,
                                                message: str) -> None:
    code = main(["--database-url", pg_url, "import", str(DATA / name), "--service", "cli-bad"])
    err = capsys.readouterr().err
    assert code == EXIT_INPUT
    assert err.startswith("prescaler: error: ") and message in err and name in err
    assert _rows(engine, "cli-bad") == 0


def test_bad_options_exit_2(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--database-url", pg_url, "simulate", "--days", "-1"])
    assert info.value.code == 2 and "--days must be greater than zero" in capsys.readouterr().err
    code = main(["--database-url", pg_url, "import", str(DATA / "trace_ok.csv"),
                 "--timezone", "Nowhere/City"])
    assert code == EXIT_INPUT and "unknown time zone 'Nowhere/City'" in capsys.readouterr().err
