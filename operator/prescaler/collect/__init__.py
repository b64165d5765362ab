"""`prescaler collect`: keeps the sources' traffic tables current from the feeds the administrator declares.

- `config`: `feeds:` beside `sources:` in the one administrator file, checked up front;
- `promql`: query templates where a service name is only ever an escaped label value;
- `prometheus`: the Prometheus feed (backfill in chunks, then every new minute);
- `kafka`: the Kafka feed (request events or per-minute counts, added exactly once per minute);
- `store`: rows with watermarks, or counts with Kafka offsets, in one transaction; `metrics`: /metrics;
- `leader`: leader election on a Kubernetes Lease;
- `runner`: `--once`, or the one-minute loop with /healthz, SIGTERM and the leader gate.

The operator never imports this package: PostgreSQL is the history it reads.
"""

from prescaler.collect.config import CollectorConfig, FeedSpec, PrometheusSpec, load_config
from prescaler.collect.runner import collect_once, main, run_forever

__all__ = ["CollectorConfig", "FeedSpec", "PrometheusSpec", "collect_once", "load_config", "main", "run_forever"]
