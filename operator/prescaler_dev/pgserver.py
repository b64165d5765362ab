"""A local PostgreSQL server for the tests and the demo, run from Debian's PostgreSQL 15 binaries.

The cluster lives in one state directory (`$PRESCALER_STATE_DIR/pg`, default `~/.cache/prescaler/pg-15`),
listens on 127.0.0.1 only with trust authentication, and keeps its unix socket and log in that directory.
Durability settings are relaxed (fsync off): this server holds test and demo data, never production data.

    python -m prescaler_dev.pgserver start|stop|status|url

`start` and `url` print the application's URL; `prescaler` itself has no default database, so point it here
with `export PRESCALER_DATABASE_URL=$(python -m prescaler_dev.pgserver start)`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg2
from psycopg2 import sql

from prescaler.errors import DataUnavailable, InputError
from prescaler_dev import settings

DEFAULT_PORT = 55432
PG_BIN = settings.pg_bin()
ROLE = "prescaler"
PASSWORD = "prescaler"
DATABASE = "prescaler"
_SERVER_USER = "postgres"
_DB_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def state_dir() -> Path:
    return settings.pg_state_dir()


def data_dir() -> Path:
    return state_dir() / "data"


def log_file() -> Path:
    return state_dir() / "postgres.log"


def url(port: int = DEFAULT_PORT, database: str = DATABASE) -> str:
    return f"postgresql+psycopg2://{ROLE}:{PASSWORD}@127.0.0.1:{port}/{database}"


def _as_root() -> bool:
    return os.geteuid() == 0


def _run(args: Sequence[str | Path], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a server binary; as root, as the postgres user (the server refuses to run as root)."""
    cmd = [str(a) for a in args]
    if _as_root():
        cmd = ["runuser", "-u", _SERVER_USER, "--", *cmd]
    # cwd "/" so the postgres user never trips over an unreadable current directory.
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/", check=False)
    if check and proc.returncode != 0:
        raise DataUnavailable(
            f"{Path(args[0]).name} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
            + _log_tail()
        )
    return proc


def _log_tail(lines: int = 15) -> str:
    try:
        text = log_file().read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n--- " + str(log_file()) + " (tail) ---\n" + "\n".join(text) if text else ""


def _prepare_state_dir() -> None:
    """Create the state directory, owned by the server user when we are root.

    Parents must be traversable by that user (the unix socket and data live inside), so an ancestor
    lacking the execute bit for others gets it: traverse only, never read.
    """
    sd = state_dir()
    sd.mkdir(parents=True, exist_ok=True)
    if not _as_root():
        sd.chmod(0o700)
        return
    pw = pwd.getpwnam(_SERVER_USER)
    for parent in sd.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
    os.chown(sd, pw.pw_uid, pw.pw_gid)
    sd.chmod(0o700)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialise start/stop across processes (parallel test sessions, the demo and the operator)."""
    sd = state_dir()
    sd.parent.mkdir(parents=True, exist_ok=True)
    with open(sd.parent / f".{sd.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _initdb() -> None:
    if (data_dir() / "PG_VERSION").exists():
        return
    if data_dir().exists():
        shutil.rmtree(data_dir())  # a half-written cluster from an interrupted initdb
    _run([PG_BIN / "initdb", "-D", data_dir(), "-U", _SERVER_USER, "--auth=trust", "--encoding=UTF8",
          "--locale=C.UTF-8", "--no-instructions"])
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{state_dir()}'",
        "timezone": "'UTC'",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
        "shared_buffers": "128MB",
    }
    conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
    hba = ("# prescaler local server: loopback and its own socket only\n"
           "local all all trust\n"
           "host all all 127.0.0.1/32 trust\n")
    _write_as_server(data_dir() / "postgresql.auto.conf", conf)
    _write_as_server(data_dir() / "pg_hba.conf", hba)


def _write_as_server(path: Path, text: str) -> None:
    path.write_text(text)
    if _as_root():
        pw = pwd.getpwnam(_SERVER_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    path.chmod(0o600)


def _admin_connect(port: int, dbname: str = "postgres") -> psycopg2.extensions.connection:
    conn = psycopg2.connect(host="127.0.0.1", port=port, user=_SERVER_USER, dbname=dbname, connect_timeout=3)
    conn.autocommit = True
    return conn


def is_running(port: int = DEFAULT_PORT) -> bool:
    """True when a server accepts connections on 127.0.0.1:port."""
    try:
        _admin_connect(port).close()
    except psycopg2.OperationalError:
        return False
    return True


def ensure_running(port: int = DEFAULT_PORT) -> str:
    """Start the local server if needed (initdb on first use) and return the application's URL."""
    if not (PG_BIN / "postgres").exists():
        raise DataUnavailable(f"PostgreSQL server binaries not found in {PG_BIN} (install postgresql-15)")
    with _lock():
        if not is_running(port):
            _prepare_state_dir()
            _initdb()
            _run([PG_BIN / "pg_ctl", "-D", data_dir(), "-l", log_file(), "-w", "-t", "60",
                  "-o", f"-p {port}", "start"])
        _ensure_role_and_database(port)
    return url(port)


def _ensure_role_and_database(port: int) -> None:
    with contextlib.closing(_admin_connect(port)) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD %s").format(sql.Identifier(ROLE)),
                        (PASSWORD,))
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE),
                                                                      sql.Identifier(ROLE)))


def stop(port: int = DEFAULT_PORT) -> None:
    """Fast shutdown of the local server; nothing to do when it is not running."""
    with _lock():
        if not (data_dir() / "postmaster.pid").exists():
            return
        status = _run([PG_BIN / "pg_ctl", "-D", data_dir(), "status"], check=False)
        if status.returncode != 0:
            return
        _run([PG_BIN / "pg_ctl", "-D", data_dir(), "-m", "fast", "-w", "-t", "60", "stop"])


def _check_db_name(name: str) -> None:
    if not _DB_NAME_RE.match(name):
        raise InputError(f"invalid database name {name!r}: use lower-case letters, digits and _ (max 63)")


def create_database(name: str, port: int = DEFAULT_PORT) -> str:
    """Create an empty database owned by the application role; return its URL."""
    _check_db_name(name)
    with contextlib.closing(_admin_connect(port)) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(ROLE)))
    return url(port, name)


def drop_database(name: str, port: int = DEFAULT_PORT) -> None:
    """Drop a database, closing any connection still open on it."""
    _check_db_name(name)
    with contextlib.closing(_admin_connect(port)) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m prescaler_dev.pgserver", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["start", "stop", "status", "url"])
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = p.parse_args(argv)
    try:
        if args.action == "start":
            print(ensure_running(args.port))
        elif args.action == "stop":
            stop(args.port)
        elif args.action == "url":
            print(url(args.port))
        else:
            running = is_running(args.port)
            print(f"{'running' if running else 'stopped'} on 127.0.0.1:{args.port} (state {state_dir()})")
            return 0 if running else 1
    except DataUnavailable as exc:
        print(f"pgserver: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
