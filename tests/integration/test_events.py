"""Scheduled events imported into a real PostgreSQL, directly and with the CLI, and read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from prescaler import cli, db, events
from unit.test_events import CALENDAR, MONDAY, write


def _rows(engine: Engine) -> list[tuple[str, str, str | None, datetime, datetime]]:
    t = db.traffic_events
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(t.c.name, t.c.kind, t.c.service, t.c.starts_at, t.c.ends_at).order_by(t.c.starts_at, t.c.name)
        ).all()]


def test_import_is_idempotent_and_updates_what_changed(engine: Engine, tmp_path: Path) -> None:
    f = write(tmp_path / "ev.csv", CALENDAR)
    first = events.import_events(engine, f, timezone="UTC")
    assert (first.rows_read, first.written, first.unchanged) == (2, 2, 0)
    again = events.import_events(engine, f)
    assert (again.written, again.unchanged) == (0, 2)
    write(f, CALENDAR.replace("2024-03-08T14:00", "2024-03-08T15:00"))
    edited = events.import_events(engine, f)
    assert (edited.written, edited.unchanged) == (1, 1)
    rows = _rows(engine)
    assert [(r[0], r[1], r[2]) for r in rows] == [("spring challenge", "challenge", "workout-api"),
                                                  ("streak push", "push", None)]
    assert rows[1][4] == datetime(2024, 3, 8, 15, tzinfo=UTC)


@pytest.mark.parametrize("bad", [
    "spring challenge,challenge,2024-03-06T17:00,2024-03-06T16:00,workout-api\n",  # end before start
    "spring challenge,challenge,2024-03-06T17:00\n",                               # missing fields
])
def test_a_bad_line_writes_nothing(make_database: object, tmp_path: Path, bad: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    url = make_database()  # type: ignore[operator]
    f = write(tmp_path / "ev.csv", CALENDAR + "new launch,challenge,2024-03-20T17:00,2024-03-20T23:00,\n" + bad)
    assert cli.main(["--database-url", url, "events", "import", str(f)]) == cli.EXIT_INPUT
    err = capsys.readouterr().err
    assert "line 5:" in err and "nothing was written" in err
    engine = db.make_engine(url)
    try:
        assert _rows(engine) == []
    finally:
        engine.dispose()


def test_cli_imports_and_the_history_reads_them_back(make_database: object, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    url = make_database()  # type: ignore[operator]
    f = write(tmp_path / "ev.csv", CALENDAR.replace("T17:00", "T18:00"))
    assert cli.main(["--database-url", url, "events", "import", str(f), "--timezone", "Europe/Berlin"]) == 0
    assert "2 written, 0 already present" in capsys.readouterr().out
    assert cli.main(["--database-url", url, "events", "import", str(f), "--timezone", "Europe/Berlin"]) == 0
    assert "0 written, 2 already present" in capsys.readouterr().out
    from prescaler.history import read_events

    engine = db.make_engine(url)
    try:
        got = read_events(engine, "workout-api", MONDAY, MONDAY + timedelta(days=7))
        other = read_events(engine, "billing", MONDAY, MONDAY + timedelta(days=7))
    finally:
        engine.dispose()
    assert list(got["kind"]) == ["challenge", "push"]
    assert got["start"].iloc[0] == pd.Timestamp("2024-03-06T17:00", tz="UTC")  # 18:00 in Berlin (CET)
    assert list(other["kind"]) == ["push"]  # an event without a service applies to every service
