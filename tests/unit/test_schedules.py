"""Cron schedules: validation that names the field, windows that follow the time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from prescaler.errors import InputError
from prescaler.schedules import next_window, parse_schedule, parse_schedules, windows_between


def _one(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "evening-show", "cron": "0 20 * * *", "duration": "1h",
                               "timeZone": "Europe/Berlin"}
    base.update(kw)
    return base


def test_windows_follow_the_time_zone_across_daylight_saving() -> None:
    s = parse_schedule(_one(), "schedules[0]")
    found = windows_between([s], datetime(2026, 3, 27, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC))
    # 20:00 in Berlin is 19:00 UTC in winter time and 18:00 UTC from Sunday 29 March (summer time).
    assert [w.start for w in found] == [pd.Timestamp("2026-03-27 19:00", tz="UTC"),
                                        pd.Timestamp("2026-03-28 19:00", tz="UTC"),
                                        pd.Timestamp("2026-03-29 18:00", tz="UTC"),
                                        pd.Timestamp("2026-03-30 18:00", tz="UTC")]
    assert all(w.end - w.start == pd.Timedelta(hours=1) and w.kind == "evening-show" for w in found)


def test_a_wall_time_skipped_by_the_clock_change_starts_at_the_next_valid_minute() -> None:
    s = parse_schedule(_one(cron="30 2 * * *", duration="30m"), "schedules[0]")
    found = windows_between([s], datetime(2026, 3, 29, tzinfo=UTC), datetime(2026, 3, 30, tzinfo=UTC))
    # 02:30 does not exist in Berlin on 29 March 2026: the window opens at 03:00 CEST = 01:00 UTC.
    assert [w.start for w in found] == [pd.Timestamp("2026-03-29 01:00", tz="UTC")]


def test_a_repeated_wall_time_opens_once() -> None:
    s = parse_schedule(_one(cron="30 2 * * *", duration="30m"), "schedules[0]")
    found = windows_between([s], datetime(2026, 10, 25, tzinfo=UTC), datetime(2026, 10, 26, tzinfo=UTC))
    assert [w.start for w in found] == [pd.Timestamp("2026-10-25 00:30", tz="UTC")]  # 02:30 CEST, the first


def test_a_window_running_at_the_range_start_is_included() -> None:
    s = parse_schedule(_one(timeZone="UTC", minReplicas=5), "schedules[0]")
    now = datetime(2026, 3, 2, 20, 30, tzinfo=UTC)
    w = next_window([s], now)
    assert w is not None and w.start == pd.Timestamp("2026-03-02 20:00", tz="UTC") and w.min_replicas == 5
    later = next_window([s], now + timedelta(hours=1))
    assert later is not None and later.start == pd.Timestamp("2026-03-03 20:00", tz="UTC")


@pytest.mark.parametrize(("patch", "message"), [
    ({"cron": "61 20 * * *"}, "schedules[0].cron"),
    ({"cron": "0 20 * *"}, "schedules[0].cron"),
    ({"timeZone": "Mars/Olympus"}, "schedules[0].timeZone"),
    ({"duration": "0m"}, "schedules[0].duration"),
    ({"duration": "soon"}, "schedules[0].duration"),
    ({"duration": "25h"}, "longer than the cron's period"),
    ({"cron": "*/15 * * * *", "duration": "20m"}, "schedules[0].duration"),
    ({"minReplicas": 50}, "schedules[0].minReplicas: 50 is above maxReplicas (40)"),
    ({"minReplicas": -1}, "schedules[0].minReplicas"),
    ({"minReplicas": True}, "schedules[0].minReplicas"),
    ({"name": ""}, "schedules[0].name"),
    ({"every": "day"}, "unknown field(s) every"),
])
def test_bad_schedules_are_rejected_naming_the_field(patch: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        parse_schedule(_one(**patch), "schedules[0]", max_replicas=40)


def test_names_are_unique_and_the_list_is_a_list() -> None:
    with pytest.raises(InputError, match=r"schedules\[1\]\.name: 'evening-show' is used twice"):
        parse_schedules([_one(), _one()])
    with pytest.raises(InputError, match="must be a list"):
        parse_schedules({"name": "x"})
    assert parse_schedules(None) == []
