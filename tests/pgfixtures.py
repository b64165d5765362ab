"""Shared fixtures for tests that need PostgreSQL (a real server, never a mock).

- `pg_server_url`: the server for the whole session: `$PRESCALER_TEST_DATABASE_URL` when set (its role needs
  CREATEDB), else the local server of `prescaler_dev.pgserver`, started if needed.
- `make_database`: a factory that creates a fresh, uniquely named database (migrated to head by default,
  or to a given revision) and drops it when the test ends.
- `engine_for`: a factory of fresh migrated databases as (url, engine), the engines disposed of at the end.
- `pg_url` / `engine`: one migrated database per test module, dropped after the module.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from prescaler import db
from prescaler_dev import pgserver

MakeDatabase = Callable[..., str]


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return os.environ.get("PRESCALER_TEST_DATABASE_URL") or pgserver.ensure_running()


def _create(server_url: str, name: str) -> str:
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def _drop(server_url: str, name: str) -> None:
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        for attempt in range(60):
            try:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except sa.exc.ProgrammingError as exc:
                # FORCE cannot end an autovacuum worker (it runs as the superuser) from the tests' role: after
                # a big write one may be busy in the database. It finishes on its own; wait and try again.
                if "pg_signal_backend" not in str(exc) or attempt == 59:
                    raise
                time.sleep(1)
    finally:
        admin.dispose()


def _database_factory(server_url: str, label: str) -> tuple[MakeDatabase, Callable[[], None]]:
    created: list[str] = []
    prefix = "t_" + re.sub(r"[^a-z0-9]+", "_", label.lower())[:30]

    def make(revision: str | None = "head") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        url = _create(server_url, name)
        created.append(name)
        if revision is not None:
            engine = db.make_engine(url)
            db.migrate(engine, revision)
            engine.dispose()
        return url

    def cleanup() -> None:
        for name in created:
            _drop(server_url, name)

    return make, cleanup


@pytest.fixture
def make_database(pg_server_url: str, request: pytest.FixtureRequest) -> Iterator[MakeDatabase]:
    """`make_database(revision="head")` → URL of a new database; `revision=None` leaves it empty."""
    make, cleanup = _database_factory(pg_server_url, request.node.name)
    yield make
    cleanup()


@pytest.fixture
def engine_for(make_database: MakeDatabase) -> Iterator[Callable[[], tuple[str, Engine]]]:
    engines: list[Engine] = []

    def make() -> tuple[str, Engine]:
        url = make_database()
        engine = db.make_engine(url)
        engines.append(engine)
        return url, engine

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture(scope="module")
def pg_url(pg_server_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    make, cleanup = _database_factory(pg_server_url, request.module.__name__.rsplit(".", 1)[-1])
    yield make()
    cleanup()


@pytest.fixture(scope="module")
def engine(pg_url: str) -> Iterator[Engine]:
    eng = db.make_engine(pg_url)
    yield eng
    eng.dispose()
