"""The Kafka feed: request events (or per-minute counts) from a topic, added to their minute exactly once.

Each batch (bounded by `batch_messages` and `batch_time`) is aggregated per (service, endpoint, minute) and
added to the source's table in one transaction together with the new offsets of its partitions
(`collector_kafka_offsets`). PostgreSQL, not Kafka, holds the consumer's position: on assignment a partition
is paused until its stored offset is read, then sought to it; Kafka's committed offsets are written after
the database commit for tools like `kafka-consumer-groups`, never read back. A crash before the commit loses
the batch and replays it; a crash after it replays nothing; a consumer that lost its partitions meanwhile is
refused by the offsets' compare-and-set (`store.CountWriter`). Partitions are shared between replicas by the
consumer group, so this feed needs no lease.

Lateness is judged in event time, per partition, as Kafka Streams does: the partition's stream time is the
newest event time seen (capped at the clock, so one producer's skew cannot close everybody's minutes), and
an event whose minute ended more than `grace` before it is dropped as `late`. Stream time is stored with the
offsets, so a replay judges every message as the first pass did, and a backlog consumed after an outage is
not late just because the clock moved on.
"""

from __future__ import annotations

import json
import json.scanner
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from sqlalchemy.engine import Engine

from prescaler.clock import Clock
from prescaler.collect.config import FeedSpec, KafkaSpec
from prescaler.collect.feed import CollectError, FeedReport, SeriesProgress, StopSignal
from prescaler.collect.prometheus import floor_minute
from prescaler.collect.store import CountWriter, Fenced, OffsetMove, load_offsets
from prescaler.errors import InputError
from prescaler.history import TrafficSource

log = logging.getLogger(__name__)

MAX_COUNT = 10**12  # requests in one counts message; more is a unit mistake, not traffic
MAX_NAME = 1024
EXAMPLES_PER_REASON = 3  # malformed messages logged per batch and reason; the rest are counted
_CONSUME_CHUNK = 10_000
JOIN_WAIT_ONCE = 150.0  # seconds: a rebalance waits up to a minute for members that poll once per cycle
# In loop mode a cycle hands back after this long even with a backlog (the runner starts the next one at once),
# so the other feeds, the liveness beat and SIGTERM are served while days of backlog are read.
CYCLE_BUDGET = 45.0

Parsed = tuple[float, str, str, int]  # event time (epoch seconds), service, endpoint, requests


class Drop(NamedTuple):
    reason: str  # the `reason` label of prescaler_collector_messages_dropped_total
    why: str  # for the log line


# The C scanner behind json.loads, called directly: a quarter of json.loads' cost per message, which is most of
# the collector's work at 100k events/s (json.loads on bytes first sniffs the encoding and strips whitespace).
_scan: Callable[[str, int], tuple[object, int]] = json.scanner.make_scanner(
    json.JSONDecoder())  # type: ignore[arg-type]  # typeshed names the context class, a decoder is what it reads
_KNOWN_NAMES_MAX = 100_000


def _loads(value: bytes) -> object:
    text = value.decode()  # UnicodeDecodeError is a ValueError
    try:
        obj, end = _scan(text, 0)
    except StopIteration:  # leading whitespace, or not JSON at all
        return json.loads(text)
    if end != len(text) and not text[end:].isspace():
        raise ValueError(f"extra data at character {end}")
    return obj


def _name(value: object) -> str | None:
    """A service or endpoint PostgreSQL can store: a non-empty string without NUL, encodable as UTF-8."""
    if type(value) is not str or not value or len(value) > MAX_NAME or "\x00" in value:
        return None
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a JSON \\ud800 escape
            return None
    return value


def _event_time(value: object) -> float | None:
    if type(value) is str:
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            return None
        seconds = (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()
    elif type(value) is int or type(value) is float:
        seconds = float(value)
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class MessageParser:
    """One message's value to (event time, service, endpoint, requests), or the reason it is dropped."""

    def __init__(self, spec: KafkaSpec) -> None:
        self.counts = spec.format == "counts"
        self.services = spec.services
        self.max_future = spec.max_future.total_seconds()
        self._known: set[str] = set()  # names already checked: a feed has few services and endpoints

    def _names(self, raw_service: object, raw_endpoint: object) -> tuple[str, str] | str:
        known = self._known
        if type(raw_service) is str and type(raw_endpoint) is str and raw_service in known \
                and raw_endpoint in known:
            return raw_service, raw_endpoint
        service, endpoint = _name(raw_service), _name(raw_endpoint)
        if service is None or endpoint is None:
            return "service" if service is None else "endpoint"
        if len(known) >= _KNOWN_NAMES_MAX:  # endpoints with ids in them: stay bounded
            known.clear()
        known.update((service, endpoint))
        return service, endpoint

    def __call__(self, value: bytes | None, now: float) -> Parsed | Drop:
        if not value:
            return Drop("not_json", "empty value")
        try:
            obj = _loads(value)
        except (ValueError, TypeError, RecursionError):
            return Drop("not_json", f"{value[:80]!r}")
        if type(obj) is not dict:
            return Drop("not_an_object", f"a JSON {type(obj).__name__}")
        try:
            raw_ts, raw_service, raw_endpoint = obj["ts"], obj["service"], obj["endpoint"]
            raw_requests = obj["requests"] if self.counts else 1
        except KeyError as exc:
            return Drop("missing_field", f"no {exc.args[0]!r}")
        ts = _event_time(raw_ts)
        if ts is None:
            return Drop("bad_timestamp", f"ts {raw_ts!r:.60} is neither ISO-8601 nor epoch seconds since 1970")
        if ts > now + self.max_future:
            return Drop("future", f"ts {raw_ts!r:.60} is ahead of the collector's clock")
        names = self._names(raw_service, raw_endpoint)
        if isinstance(names, str):
            return Drop("bad_field", f"{names} {obj[names]!r:.80} is not a non-empty string")
        service, endpoint = names
        if self.services is not None and service not in self.services:
            return Drop("unknown_service", f"service {service!r:.80} is not in the feed's services")
        requests = raw_requests
        if type(requests) is not int:
            if type(requests) is float and requests.is_integer():
                requests = int(requests)
            else:
                return Drop("bad_count", f"requests {raw_requests!r:.40} is not a whole number")
        if requests < 0:
            return Drop("negative_count", f"requests {requests}")
        if requests > MAX_COUNT:
            return Drop("bad_count", f"requests {requests} is more than {MAX_COUNT:,}")
        return ts, service, endpoint, requests


@dataclass
class PartitionState:
    """One assigned partition. `position` is None while the partition waits (paused) for its stored offset."""

    position: int | None = None
    stored: int | None = None  # next_offset in the database; None: no row yet
    stream_time: float | None = None
    # The end offset when the cycle began: reaching it means caught up. For a read_committed consumer the
    # broker answers the last stable offset, so an open transaction does not hold a cycle up.
    target: int = 0
    at_end: bool = False  # the consumer reported reaching `target` (past transaction markers, which are skipped)
    expired: int = 0  # messages lost to retention before this position (counted with the next batch)

    @property
    def caught_up(self) -> bool:
        return self.position is not None and (self.position >= self.target or self.at_end)


@dataclass
class Batch:
    counts: dict[tuple[int, str, str], int] = field(default_factory=dict)
    messages: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[str, int, int, str]] = field(default_factory=list)  # (reason, partition, offset, why)

    def __bool__(self) -> bool:
        return self.messages > 0


def consumer_config(feed: str, spec: KafkaSpec) -> dict[str, Any]:
    """librdkafka settings: offsets are ours (no auto commit, no auto store); credentials read now."""
    conf: dict[str, Any] = {
        "bootstrap.servers": ",".join(spec.bootstrap_servers),
        "group.id": spec.group,
        "client.id": f"prescaler-collector-{feed}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # Transaction markers leave offset gaps, and an open transaction holds reading back: the end-of-partition
        # event says "caught up" where comparing offsets cannot.
        "enable.partition.eof": True,
        "auto.offset.reset": spec.start,
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "roundrobin",
        # A cycle polls once a minute; Prometheus feeds run in between, so allow long pauses between polls.
        # Liveness is the background heartbeat: a killed replica's partitions move on after 10 s.
        "max.poll.interval.ms": 600_000,
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 3_000,
        "socket.timeout.ms": max(10_000, int(spec.timeout.total_seconds() * 1000)),
        "security.protocol": spec.security_protocol,
        # librdkafka logs each refused connection; the feed reports failures itself, once, on one line.
        "log_level": 0,
    }
    try:
        if spec.tls is not None:
            if spec.tls.ca_file is not None:
                conf["ssl.ca.location"] = str(spec.tls.ca_file)
            if spec.tls.cert_file is not None and spec.tls.key_file is not None:
                conf["ssl.certificate.location"] = str(spec.tls.cert_file)
                conf["ssl.key.location"] = str(spec.tls.key_file)
            if spec.tls.key_password is not None:
                conf["ssl.key.password"] = spec.tls.key_password.read()
        if spec.sasl is not None:
            conf.update({"sasl.mechanism": spec.sasl.mechanism, "sasl.username": spec.sasl.username,
                         "sasl.password": spec.sasl.password.read()})
    except InputError as exc:
        raise CollectError("auth", f"cannot read the Kafka credentials: {exc}", transient=True) from exc
    return conf


def _error_kind(error: KafkaError | None) -> str:
    if error is None:
        return "unreachable"
    code = error.code()
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED):
        return "auth"
    if code == KafkaError._SSL or "SSL" in error.str():
        return "tls"
    return "unreachable"


class KafkaFeed:
    needs_leader = False

    def __init__(self, spec: FeedSpec, source: TrafficSource, engine: Engine, *, clock: Clock | None = None,
                 once: bool = False, consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer) -> None:
        assert spec.kafka is not None
        self.spec = spec
        self.settings = spec.kafka
        self.topic = spec.kafka.topic
        self.engine = engine
        self.clock = clock or Clock()
        self.writer = CountWriter(engine, source)
        self.parse = MessageParser(spec.kafka)
        # Joining a group waits for its live members to rejoin (they poll once a minute) and for a killed
        # member's session to expire: `--once` waits that long; the loop simply collects next cycle.
        self._join_wait = JOIN_WAIT_ONCE if once else min(5.0, spec.kafka.timeout.total_seconds())
        self._once = once
        self._factory = consumer_factory
        self._consumer: Consumer | None = None
        self._partitions: dict[int, PartitionState] = {}
        self._rebalanced = False
        self._batch = Batch()
        self._report: FeedReport | None = None
        self._client_error: KafkaError | None = None
        self._seen_errors: set[str] = set()

    # --- the consumer and its group ------------------------------------------------------------------

    def _on_error(self, error: KafkaError) -> None:
        # Called from poll(): broker-wide trouble (all brokers down, authentication). Kept for the message of
        # the next failure; informational meanwhile, since librdkafka retries on its own.
        self._client_error = error
        if error.str() not in self._seen_errors:  # librdkafka repeats a refused connection many times a second
            self._seen_errors.add(error.str())
            log.info("feed %r: Kafka client: %s", self.spec.name, error.str())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Paused until the stored offsets are read (outside the callback, so a database outage is reported
        # as such and the group is not held up).
        for tp in partitions:
            self._partitions[tp.partition] = PartitionState()
        consumer.assign(partitions)
        if partitions:
            consumer.pause(partitions)
        self._rebalanced = True
        log.info("feed %r: assigned partitions %s of %r", self.spec.name,
                 sorted(tp.partition for tp in partitions), self.topic)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Still ours until this returns: write what was read from them, so the next owner starts after it.
        if self._batch:
            try:
                self._write(self._batch)
            except (CollectError, Fenced) as exc:
                log.warning("feed %r: batch not written before a rebalance (it will be read again): %s",
                            self.spec.name, exc)
                self._forget_positions()
            self._batch = Batch()
        for tp in partitions:
            self._partitions.pop(tp.partition, None)
        consumer.unassign()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Someone else may own them already: nothing read from them may be written now.
        self._batch = Batch()
        self._forget_positions()
        for tp in partitions:
            self._partitions.pop(tp.partition, None)
        consumer.unassign()

    def _consumer_or_new(self) -> Consumer:
        if self._consumer is None:
            conf = consumer_config(self.spec.name, self.settings)
            conf["error_cb"] = self._on_error
            consumer = self._factory(conf)
            consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                               on_lost=self._on_lost)
            self._consumer = consumer
            self._rebalanced = False
        return self._consumer

    def _drop_consumer(self) -> None:
        """Leave the group; the next cycle joins again with fresh settings (a rotated password, say)."""
        consumer, self._consumer = self._consumer, None
        self._partitions.clear()
        self._batch = Batch()
        if consumer is not None:
            try:
                consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.info("feed %r: closing the consumer: %s", self.spec.name, exc)

    def close(self) -> None:
        self._drop_consumer()

    def _kafka_error(self, action: str, exc: KafkaException | None = None) -> CollectError:
        error = exc.args[0] if exc is not None and exc.args and isinstance(exc.args[0], KafkaError) else None
        cause = self._client_error or error
        kind = _error_kind(cause)
        servers = ",".join(self.settings.bootstrap_servers)
        detail = cause.str() if cause is not None else "no answer"
        what = {"auth": "refused the credentials", "tls": "failed the TLS handshake"}.get(kind, "is unreachable")
        return CollectError(kind, f"Kafka at {servers} {what} while {action}: {detail}", transient=True)

    def _check_topic(self, consumer: Consumer) -> None:
        timeout = self.settings.timeout.total_seconds()
        self._client_error = None
        try:
            metadata = consumer.list_topics(self.topic, timeout=timeout)
        except KafkaException as exc:
            self._poll(consumer, 0)  # error callbacks (authentication, TLS) are delivered by a poll
            raise self._kafka_error(f"reading the metadata of topic {self.topic!r}", exc) from exc
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            reason = topic.error.str() if topic is not None and topic.error is not None else "not found"
            if topic is not None and topic.error is not None and _error_kind(topic.error) == "auth":
                raise CollectError("auth", f"Kafka refused topic {self.topic!r}: {reason}", transient=True)
            raise CollectError("unknown_topic", f"topic {self.topic!r}: {reason}", transient=False)

    def _await_assignment(self, consumer: Consumer, stop: StopSignal) -> None:
        """On first joining, wait a while for the group to give us partitions (later rebalances are served by
        the consume() calls of each cycle)."""
        deadline = time.monotonic() + self._join_wait
        while not self._rebalanced and not stop.is_set():
            if time.monotonic() > deadline:
                if self._once:
                    raise CollectError("group", f"consumer group {self.settings.group!r} assigned no partitions "
                                                f"within {self._join_wait:.0f}s", transient=True)
                log.info("feed %r: still joining consumer group %r", self.spec.name, self.settings.group)
                return
            self._poll(consumer, 0.2)

    def _poll(self, consumer: Consumer, timeout: float) -> None:
        # Every partition is paused or positioned, so a message arriving here belongs to a partition that was
        # positioned: it is not lost, since its position is not advanced and the next batch reads it again.
        for m in consumer.consume(num_messages=1, timeout=timeout):
            p, offset = m.partition(), m.offset()
            st = self._partitions.get(p) if p is not None else None
            if m.error() is None and p is not None and st is not None and st.position is not None \
                    and offset is not None and offset >= st.position:
                consumer.seek(TopicPartition(self.topic, p, st.position))

    # --- positions ----------------------------------------------------------------------------------------

    def _forget_positions(self) -> None:
        """Every partition back to its stored offset (read again from the database before consuming)."""
        paused = []
        for p, st in self._partitions.items():
            if st.position is not None:
                st.position = None
                paused.append(TopicPartition(self.topic, p))
        if paused and self._consumer is not None:
            try:
                self._consumer.pause(paused)
            except KafkaException as exc:
                log.info("feed %r: pausing partitions: %s", self.spec.name, exc)

    def _watermarks(self, consumer: Consumer, partition: int) -> tuple[int, int]:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition),
                                                       timeout=self.settings.timeout.total_seconds(), cached=False)
        except KafkaException as exc:
            raise self._kafka_error(f"reading the end offsets of {self.topic!r}", exc) from exc
        return int(low), int(high)

    def _position(self, consumer: Consumer, *, refresh_targets: bool) -> None:
        """Seek waiting partitions to their stored offsets; set each partition's end-of-cycle target."""
        waiting = [p for p, st in self._partitions.items() if st.position is None]
        marks = load_offsets(self.engine, self.spec.name, self.spec.source, self.topic, waiting) if waiting else {}
        for p, st in list(self._partitions.items()):
            if st.position is not None and not refresh_targets:
                continue
            low, high = self._watermarks(consumer, p)
            st.target, st.at_end = high, False
            if st.position is not None:
                continue
            mark = marks.get(p)
            if mark is None:
                st.stored, st.stream_time, start = None, None, (low if self.settings.start == "earliest" else high)
            else:
                st.stored, st.stream_time, start = mark.next_offset, mark.stream_time, mark.next_offset
                if start < low:
                    st.expired = low - start
                    log.warning("feed %r: partition %d: %d messages after the stored offset %d were deleted by "
                                "retention before they were collected", self.spec.name, p, st.expired, start)
                    start = low
                elif start > high:
                    log.warning("feed %r: partition %d: the stored offset %d is past the end of the log (%d): "
                                "was the topic recreated? starting from its beginning", self.spec.name, p,
                                start, high)
                    start = low
            tp = TopicPartition(self.topic, p, start)
            try:
                consumer.seek(tp)
                consumer.resume([tp])
            except KafkaException as exc:
                log.info("feed %r: partition %d not ready to seek (%s); next batch", self.spec.name, p, exc)
                continue
            st.position = start

    def _caught_up(self) -> bool:
        return all(st.caught_up for st in self._partitions.values())

    # --- batches -----------------------------------------------------------------------------------------

    def _fill(self, consumer: Consumer, stop: StopSignal) -> None:
        """Read into self._batch until it is full, `batch_time` has passed, or every partition is caught up.

        consume() is called at least once: it also serves the group's rebalance callbacks, which an idle
        topic would otherwise hold up."""
        spec = self.settings
        deadline = time.monotonic() + spec.batch_time.total_seconds()
        grace = spec.grace.total_seconds()
        parse = self.parse
        eof = KafkaError._PARTITION_EOF
        first = True
        while not stop.is_set():
            batch = self._batch  # a rebalance inside consume() may have written it and started another
            left = deadline - time.monotonic()
            caught_up = self._caught_up()
            if not first and (batch.messages >= spec.batch_messages or left <= 0 or caught_up):
                return
            first = False
            messages: list[Message] = consumer.consume(min(_CONSUME_CHUNK, spec.batch_messages - batch.messages),
                                                       timeout=0 if caught_up else max(0.0, min(left, 0.5)))
            batch = self._batch
            now = self.clock.now().timestamp()
            counts = batch.counts
            for m in messages:
                error = m.error()
                p, offset = m.partition(), m.offset()
                st = self._partitions.get(p) if p is not None else None
                if error is not None:
                    if error.code() == eof:
                        # Only a flag, and only for an end at or past the cycle's target: an event queued
                        # before the targets were read (or before a seek back) says nothing about now, and
                        # moving the position to its offset could skip messages.
                        if st is not None and st.position is not None and offset is not None \
                                and offset >= max(st.position, st.target):
                            st.at_end = True
                        continue
                    if error.fatal() or error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART,
                                                         KafkaError._UNKNOWN_PARTITION):
                        raise CollectError("unknown_topic" if not error.fatal() else "kafka",
                                           f"Kafka: {error.str()}", transient=not error.fatal())
                    log.info("feed %r: Kafka: %s", self.spec.name, error.str())
                    continue
                if p is None or st is None or st.position is None or offset is None or offset < st.position:
                    continue  # revoked, waiting for its stored offset, or fetched before a seek
                st.position = offset + 1
                batch.messages += 1
                parsed = parse(m.value(), now)
                if isinstance(parsed, Drop):
                    batch.dropped[parsed.reason] += 1
                    if batch.dropped[parsed.reason] <= EXAMPLES_PER_REASON:
                        batch.examples.append((parsed.reason, p, offset, parsed.why))
                    continue
                ts, service, endpoint, requests = parsed
                stream = st.stream_time
                if stream is None or ts > stream:
                    st.stream_time = stream = min(ts, now)
                minute = int(ts // 60) * 60
                if minute + 60 + grace <= stream:
                    batch.dropped["late"] += 1
                    if batch.dropped["late"] <= EXAMPLES_PER_REASON:
                        batch.examples.append(("late", p, offset, f"minute {_iso(minute)} closed at stream time "
                                                                  f"{_iso(stream)}"))
                    continue
                key = (minute, service, endpoint)
                counts[key] = counts.get(key, 0) + requests

    def _write(self, batch: Batch) -> None:
        """The batch's counts and its partitions' new offsets in one transaction; then Kafka's offsets."""
        moves = [OffsetMove(p, st.stored, st.position, st.stream_time) for p, st in self._partitions.items()
                 if st.position is not None and st.position != st.stored]
        if not moves and not batch.counts:
            return
        rows = self.writer.write(feed=self.spec.name, source_name=self.spec.source, topic=self.topic,
                                 counts=batch.counts, moves=moves)
        expired = 0
        for move in moves:
            st = self._partitions[move.partition]
            st.stored = move.next_offset
            expired += st.expired
            st.expired = 0
        report = self._report
        if report is not None:
            report.rows_written += rows
            report.messages = (report.messages or 0) + batch.messages
            report.dropped.update(batch.dropped)
            if expired:
                report.dropped["expired"] += expired
        self._log_dropped(batch)
        if self._consumer is not None and moves:
            # Informational (lag dashboards, kafka-consumer-groups): the position of record is in PostgreSQL.
            try:
                self._consumer.commit(offsets=[TopicPartition(self.topic, m.partition, m.next_offset)
                                               for m in moves], asynchronous=True)
            except KafkaException as exc:
                log.info("feed %r: committing offsets to Kafka: %s", self.spec.name, exc)

    def _log_dropped(self, batch: Batch) -> None:
        for reason, partition, offset, why in batch.examples:
            log.warning("feed %r: dropped message %s[%d]@%d: %s: %s", self.spec.name, self.topic, partition,
                        offset, reason, why)
        more = sum(batch.dropped.values()) - len(batch.examples)
        if more > 0:
            log.warning("feed %r: and %d more messages dropped in this batch (%s)", self.spec.name, more,
                        ", ".join(f"{r}: {n}" for r, n in sorted(batch.dropped.items())))

    # --- one cycle ---------------------------------------------------------------------------------------

    def collect(self, newest: datetime, stop: StopSignal) -> FeedReport:
        """Consume until every assigned partition reaches the end offset it had when the cycle began (in loop
        mode, or until CYCLE_BUDGET has passed: the report's backlog then says there is more)."""
        report = FeedReport(feed=self.spec.name, newest=newest, messages=0)
        self._report = report
        self._seen_errors.clear()
        budget_end = float("inf") if self._once else time.monotonic() + CYCLE_BUDGET
        try:
            consumer = self._consumer_or_new()
            self._check_topic(consumer)
            self._await_assignment(consumer, stop)
            self._position(consumer, refresh_targets=True)
            while not stop.is_set():
                self._fill(consumer, stop)
                batch, self._batch = self._batch, Batch()
                try:
                    self._write(batch)
                except Fenced as exc:
                    log.warning("feed %r: batch discarded and read again from the stored offsets: %s",
                                self.spec.name, exc)
                    self._forget_positions()
                self._position(consumer, refresh_targets=False)
                if self._caught_up() or time.monotonic() >= budget_end:
                    break
        except CollectError as exc:
            report.errors.append(("", exc))
            self._batch = Batch()
            self._forget_positions()
            if exc.kind in ("auth", "tls"):  # credentials are read when a consumer is made: make a new one
                self._drop_consumer()
        finally:
            self._report = None
        self._progress(report, newest)
        return report

    def _progress(self, report: FeedReport, newest: datetime) -> None:
        backlog = 0
        for p, st in sorted(self._partitions.items()):
            if st.caught_up:
                until: datetime | None = newest
            elif st.stream_time is not None:
                until = min(newest, floor_minute(datetime.fromtimestamp(st.stream_time, UTC)))
            else:
                until = None
            if not st.at_end:
                backlog += max(0, st.target - (st.position if st.position is not None else st.stored or 0))
            report.progress.append(SeriesProgress(f"{self.topic}[{p}]", None, until))
        report.backlog = backlog
        report.minutes = 0


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

