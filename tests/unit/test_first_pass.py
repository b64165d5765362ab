"""The start-up pass's view of peering: which peers kopf counts as alive."""

from __future__ import annotations

from datetime import UTC, datetime

from prescaler import handlers


def test_live_peers_follow_kopfs_rule() -> None:
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    status = {
        "fresh": {"priority": 5, "lifetime": 60, "lastseen": "2026-12-06T11:59:30+00:00"},
        "lapsed": {"priority": 9, "lifetime": 60, "lastseen": "2026-12-06T11:58:59+00:00"},
        "short-lived": {"priority": 9, "lifetime": 10, "lastseen": "2026-12-06T11:59:30+00:00"},
        "naive-time": {"priority": 1, "lifetime": 60, "lastseen": "2026-12-06T11:59:30"},
        "never-seen": {"priority": 1},  # kopf counts a missing time as now
        "garbled": {"priority": 1, "lastseen": "yesterday"},  # unreadable: assume alive rather than act beside it
    }
    assert sorted(handlers.live_peers(status, now)) == ["fresh", "garbled", "naive-time", "never-seen"]
    assert handlers.live_peers({}, now) == []
