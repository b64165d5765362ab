"""Database engines without a server: a bad URL, an unreachable server."""

from __future__ import annotations

import pytest

from prescaler import db
from prescaler.errors import DataUnavailable, InputError


def test_unreachable_database_is_data_unavailable() -> None:
    engine = db.make_engine("postgresql+psycopg2://prescaler:prescaler@127.0.0.1:9/prescaler")
    with pytest.raises(DataUnavailable, match="migrating the schema"):
        db.migrate(engine)
    with pytest.raises(DataUnavailable):
        db.load_latest_forecast(engine, "x")


def test_bad_url_is_input_error() -> None:
    with pytest.raises(InputError):
        db.make_engine("not a url")
    with pytest.raises(InputError):
        db.make_engine("nosuchdb://x/y")
