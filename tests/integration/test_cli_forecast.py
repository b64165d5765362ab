"""`prescaler forecast` against a real PostgreSQL: a stored, printed and saved forecast; bad input rejected
with nothing written."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from prescaler.cli import EXIT_INPUT, main


def _forecast_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM forecasts")).scalar_one())


@pytest.fixture(scope="module")
def simulated(pg_url: str) -> str:
    args = ["--database-url", pg_url, "simulate", "--days", "15", "--step", "5m", "--seed", "11",
            "--start", "2025-06-02T00:00:00", "--service", "fc-api"]
    assert main(args) == 0
    return pg_url


def test_forecast_is_printed_stored_and_saved(
    simulated: str, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_csv = tmp_path / "fc.csv"
    before = _forecast_rows(engine)
    assert main(["--database-url", simulated, "forecast", "--series", "fc-api", "--model", "seasonal-naive",
                 "--horizon", "2d", "--output", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "model seasonal-naive" in printed and "576 steps of 5m" in printed and "peak" in printed
    frame = pd.read_csv(out_csv)
    assert list(frame.columns) == ["ds", "yhat", "lower", "upper"] and len(frame) == 576
    assert (frame["lower"] <= frame["yhat"]).all() and (frame["yhat"] <= frame["upper"]).all()
    assert _forecast_rows(engine) == before + 1
    with engine.connect() as conn:
        points = conn.execute(sa.text(
            "SELECT count(*) FROM forecast_points p JOIN forecasts f ON f.id = p.forecast_id "
            "WHERE f.series = 'fc-api'")).scalar_one()
    assert points >= 576


def test_default_horizon_is_seven_days(simulated: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--database-url", simulated, "forecast", "--series", "fc-api", "--model", "holt-winters",
                 "--step", "1h"]) == 0
    assert "168 steps of 1h" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--series", "fc-api", "--model", "arima"], "unknown forecast model 'arima'"),
        (["--series", "no-such-series"], "has no data"),
        (["--series", "fc-api", "--horizon", "seven days"], "--horizon"),
    ],
)
def test_bad_input_writes_nothing(
    simulated: str, engine: Engine, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _forecast_rows(engine)
    with pytest.raises(SystemExit) if "--horizon" in args else contextlib.nullcontext():
        code = main(["--database-url", simulated, "forecast", *args])
        assert code == EXIT_INPUT
    assert message in capsys.readouterr().err
    assert _forecast_rows(engine) == before



def test_backtest_of_a_stored_series(simulated: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    out = tmp_path / "bt.json"
    assert main(["--database-url", simulated, "backtest", "--series", "fc-api", "--step", "1h", "--last", "1d",
                 "--capacity", "20000", "--startup-delay", "1h", "--model", "seasonal-naive", "--no-progress",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["policies"]) >= {"static", "reactive", "predictive", "oracle"}  # peers are added keys
    assert result["policies"]["oracle"]["unserved_pct"] == 0
    assert "predictive" in capsys.readouterr().out
