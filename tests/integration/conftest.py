"""Integration tests run against real servers and tools: PostgreSQL (the fixtures of `pgfixtures`), Prometheus,
Kafka, helm. The unit tier never loads these fixtures, so it runs where no PostgreSQL is installed."""

from pgfixtures import engine, engine_for, make_database, pg_server_url, pg_url

__all__ = ["engine", "engine_for", "make_database", "pg_server_url", "pg_url"]
