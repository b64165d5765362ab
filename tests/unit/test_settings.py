"""The settings table: each variable typed, defaulted and checked, with errors that name it; the collector's
settings read from the same table; the database URL of the one-shot commands."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from prescaler import cli
from prescaler.clock import Clock
from prescaler.collect.config import CollectorSettings
from prescaler.config import (
    CLOCK_SPEED,
    COLLECTOR,
    DATABASE_URL,
    LOG_LEVEL,
    OPERATOR,
    PROCESSES,
    SETTINGS,
    ConfigError,
    Setting,
    database_url,
    read_clock,
)
from prescaler.errors import InputError

URL = "postgresql+psycopg2://prescaler@127.0.0.1:5432/prescaler"
NO_URL = "no database URL: set PRESCALER_DATABASE_URL or pass --database-url"


def test_every_setting_is_one_documented_row() -> None:
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    for s in SETTINGS:
        assert s.read_by and set(s.read_by) <= set(PROCESSES), s.name
        assert s.type and s.default_text and s.description, s.name
        assert "\n" not in s.description and "|" not in s.description, s.name


def test_unset_and_blank_take_the_default_and_a_value_is_parsed() -> None:
    for s in SETTINGS:
        problems: list[str] = []
        assert s.read({}, problems) == s.default
        assert s.read({s.name: "  "}, problems) == s.default
        assert problems == []
    problems = []
    assert CLOCK_SPEED.read({"PRESCALER_CLOCK_SPEED": " 60 "}, problems) == 60.0
    assert LOG_LEVEL.read({"PRESCALER_LOG_LEVEL": "warning"}, problems) == "WARNING"
    assert problems == []


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.parse is not str], ids=lambda s: s.name)
def test_a_bad_value_is_one_line_naming_the_variable(setting: Setting[Any]) -> None:
    problems: list[str] = []
    assert setting.read({setting.name: "not-a-value"}, problems) == setting.default
    assert len(problems) == 1 and problems[0].startswith(f"{setting.name}: ") and "'not-a-value'" in problems[0]


def test_numbers_are_checked_against_their_bounds() -> None:
    by_name = {s.name: s for s in SETTINGS}
    for name, text, words in (("PRESCALER_FIT_TIMEOUT", "0", "greater than 0"),
                              ("PRESCALER_MAX_CONCURRENT_RECONCILES", "0", "at least 1"),
                              ("PRESCALER_MAX_CONCURRENT_RECONCILES", "2.5", "not a whole number"),
                              ("PRESCALER_REFIT_SPREAD", "1", "less than 1"),
                              ("PRESCALER_PEERING_SETTLE", "-1", "at least 0"),
                              ("PRESCALER_TIMER_INTERVAL", "nan", "not a finite number"),
                              ("PRESCALER_FIT_TIMEOUT", "inf", "not a finite number"),
                              ("PRESCALER_CLOCK_SPEED", "0", "greater than 0")):
        problems: list[str] = []
        by_name[name].read({name: text}, problems)
        assert len(problems) == 1 and words in problems[0], (name, text, problems)


def test_the_scaled_clock_a_parent_passes_on_is_the_one_its_child_reads() -> None:
    clock = Clock.scaled_from(datetime(2024, 3, 4, 8, 30, tzinfo=UTC), 120.0)
    problems: list[str] = []
    assert read_clock(clock.env(), problems) == clock
    assert problems == []
    assert read_clock({}, problems) == Clock()
    # Epoch and speed describe a scaled clock only; without a start they are not read.
    assert read_clock({"PRESCALER_CLOCK_SPEED": "fast"}, problems) == Clock() and problems == []
    naive = read_clock({"PRESCALER_CLOCK_START": "2024-03-04T08:30:00", "PRESCALER_CLOCK_EPOCH": "100"}, problems)
    assert naive == Clock(start=datetime(2024, 3, 4, 8, 30, tzinfo=UTC), epoch=100.0, speed=1.0)


def test_the_commands_database_url_comes_from_the_flag_then_the_environment() -> None:
    assert database_url(None, {"PRESCALER_DATABASE_URL": "postgresql://env/db"}) == "postgresql://env/db"
    assert database_url("postgresql://flag/db", {"PRESCALER_DATABASE_URL": "postgresql://env/db"}) == \
        "postgresql://flag/db"


@pytest.mark.parametrize("env", [{}, {"PRESCALER_DATABASE_URL": ""}, {"PRESCALER_DATABASE_URL": "  "}])
def test_no_database_url_is_an_input_error_not_a_local_default(env: dict[str, str]) -> None:
    with pytest.raises(InputError, match=rf"^{NO_URL}$"):
        database_url(None, env)


def test_the_collector_reads_its_settings_typed() -> None:
    clock = Clock.scaled_from(datetime(2024, 3, 4, tzinfo=UTC), 60.0)
    settings = CollectorSettings.build({"PRESCALER_DATABASE_URL": URL, "PRESCALER_LOG_LEVEL": "debug",
                                        "POD_NAME": "collector-0", **clock.env()})
    assert settings == CollectorSettings(database_url=URL, log_level="DEBUG", clock=clock, pod_name="collector-0")
    defaults = CollectorSettings.build({"PRESCALER_DATABASE_URL": URL})
    assert (defaults.log_level, defaults.clock, defaults.pod_name) == ("INFO", Clock(), "")
    assert CollectorSettings.build({"PRESCALER_DATABASE_URL": URL}, database_url="postgresql://flag/db"
                                   ).database_url == "postgresql://flag/db"


def test_the_collector_names_every_bad_setting() -> None:
    with pytest.raises(ConfigError) as err:
        CollectorSettings.build({"PRESCALER_LOG_LEVEL": "loud", "PRESCALER_CLOCK_START": "yesterday"})
    assert err.value.problems[0] == NO_URL
    assert [p.split(": ", 1)[0] for p in err.value.problems[1:]] == ["PRESCALER_LOG_LEVEL", "PRESCALER_CLOCK_START"]


def test_the_log_level_is_read_by_both_long_running_processes() -> None:
    assert set(LOG_LEVEL.read_by) == {OPERATOR, COLLECTOR}
    assert set(DATABASE_URL.read_by) == set(PROCESSES)


def test_prescaler_collect_with_a_bad_log_level_exits_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("feeds:\n  - name: web\n    prometheus: {url: 'http://127.0.0.1:9', "
                      "query: 'sum(x{service=\"$service\"})', services: [web]}\n")
    # Nothing listens on port 9: a collector that went on past its settings would fail otherwise (exit 3).
    monkeypatch.setenv("PRESCALER_DATABASE_URL", "postgresql+psycopg2://prescaler@127.0.0.1:9/prescaler")
    monkeypatch.setenv("PRESCALER_LOG_LEVEL", "chatty")
    assert cli.main(["collect", "--config", str(config), "--once"]) == cli.EXIT_INPUT
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["prescaler: error: PRESCALER_LOG_LEVEL: 'chatty' is not one of DEBUG, INFO, "
                                "WARNING, ERROR, CRITICAL"]
