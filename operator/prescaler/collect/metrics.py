"""The collector's own metrics (`prescaler collect` serves them on /metrics). The single source of their names.

Labels are the feed's name and small enums (error kind, skip reason); never a service name, so a feed of
thousands of services stays a handful of series.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from prescaler.collect.feed import FeedReport, SeriesProgress

REGISTRY = CollectorRegistry(auto_describe=True)

ROWS_WRITTEN = Counter(
    "prescaler_collector_rows_written", "Rows inserted or changed in the source's table.", ["feed"],
    registry=REGISTRY,
)
MINUTES = Counter(
    "prescaler_collector_evaluations", "Series-minutes evaluated (a minute without a sample writes no row).",
    ["feed"], registry=REGISTRY,
)
SKIPPED = Counter(
    "prescaler_collector_samples_skipped", "Samples not written, by reason (negative, nan, infinite, too_large).",
    ["feed", "reason"], registry=REGISTRY,
)
ERRORS = Counter(
    "prescaler_collector_errors",
    "Failed series collections or Kafka cycles by kind (unreachable, query, multiple_series, auth, tls, timeout, "
    "bad_response, unknown_topic, group, kafka, database, database_unavailable).",
    ["feed", "kind"], registry=REGISTRY,
)
MESSAGES = Counter(
    "prescaler_collector_messages",
    "Kafka messages consumed and committed with their counts (dropped ones included).", ["feed"],
    registry=REGISTRY,
)
DROPPED = Counter(
    "prescaler_collector_messages_dropped",
    "Kafka messages not counted, by reason (late, not_json, not_an_object, missing_field, bad_field, "
    "bad_timestamp, bad_count, negative_count, future, unknown_service, expired).",
    ["feed", "reason"], registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "prescaler_collector_consumer_lag_messages",
    "Kafka messages of the assigned partitions not yet counted, at the end of the last cycle.", ["feed"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "prescaler_collector_leader",
    "1 while this replica holds the collector's lease (or runs without leader election), else 0.",
    registry=REGISTRY,
)
NEWEST_MINUTE = Gauge(
    "prescaler_collector_newest_minute_timestamp_seconds",
    "End of the newest minute collected for every series of the feed (the slowest series' watermark).",
    ["feed"], registry=REGISTRY,
)
LAG = Gauge(
    "prescaler_collector_lag_seconds",
    "Now minus the newest minute collected for every series of the feed, at the end of the last cycle.",
    ["feed"], registry=REGISTRY,
)
BACKFILL_PROGRESS = Gauge(
    "prescaler_collector_backfill_progress_ratio",
    "Share of the feed's backfill window collected (1 once every series has caught up).",
    ["feed"], registry=REGISTRY,
)
SERIES = Gauge(
    "prescaler_collector_series", "Series the feed collects.", ["feed"], registry=REGISTRY,
)
CYCLE_DURATION = Histogram(
    "prescaler_collector_cycle_duration_seconds", "Duration of one collection cycle of a feed.", ["feed"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300), registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    "prescaler_collector_last_success_timestamp_seconds",
    "Unix time of the end of the feed's last cycle without errors.", ["feed"], registry=REGISTRY,
)

METRIC_NAMES: tuple[str, ...] = (
    "prescaler_collector_rows_written",
    "prescaler_collector_evaluations",
    "prescaler_collector_samples_skipped",
    "prescaler_collector_errors",
    "prescaler_collector_newest_minute_timestamp_seconds",
    "prescaler_collector_lag_seconds",
    "prescaler_collector_backfill_progress_ratio",
    "prescaler_collector_series",
    "prescaler_collector_cycle_duration_seconds",
    "prescaler_collector_last_success_timestamp_seconds",
    "prescaler_collector_messages",
    "prescaler_collector_messages_dropped",
    "prescaler_collector_consumer_lag_messages",
    "prescaler_collector_leader",
)


def record(report: FeedReport, *, now: float, seconds: float) -> None:
    """Export one cycle of one feed."""
    feed = report.feed
    ROWS_WRITTEN.labels(feed).inc(report.rows_written)
    MINUTES.labels(feed).inc(report.minutes)
    for reason, count in report.skipped.items():
        SKIPPED.labels(feed, reason).inc(count)
    if report.messages is not None:
        MESSAGES.labels(feed).inc(report.messages)
    for reason, count in report.dropped.items():
        DROPPED.labels(feed, reason).inc(count)
    if report.backlog is not None:
        CONSUMER_LAG.labels(feed).set(report.backlog)
    for _, error in report.errors:
        ERRORS.labels(feed, error.kind).inc()
    CYCLE_DURATION.labels(feed).observe(seconds)
    if not report.errors:
        LAST_SUCCESS.labels(feed).set(now)
    SERIES.labels(feed).set(len(report.progress))
    marks = [p.collected_until for p in report.progress]
    if marks and all(m is not None for m in marks):
        slowest = min(m.timestamp() for m in marks if m is not None)
        NEWEST_MINUTE.labels(feed).set(slowest)
        LAG.labels(feed).set(max(0.0, now - slowest))
    if report.progress and report.backlog is None:  # a Kafka feed has a backlog, not a backfill window
        BACKFILL_PROGRESS.labels(feed).set(sum(_done(p, report.newest) for p in report.progress)
                                           / len(report.progress))


def _done(p: SeriesProgress, newest: datetime) -> float:
    """Share of one series' window collected; a series never collected has done nothing yet."""
    if p.backfill_from is None or p.collected_until is None:
        return 0.0
    window = (newest - p.backfill_from).total_seconds()
    return 1.0 if window <= 0 else min(1.0, (p.collected_until - p.backfill_from).total_seconds() / window)
