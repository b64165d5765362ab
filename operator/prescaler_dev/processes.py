"""Processes and ports of this machine, read from /proc: what the local control plane needs to stop exactly
the processes it started (never a recycled pid) and to find who holds a port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

STOP_GRACE_SECONDS = 10.0


def proc_start_time(pid: int) -> int | None:
    """Kernel start time of a pid (guards against killing a recycled pid), None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int, start_time: int | None = None) -> bool:
    current = proc_start_time(pid)
    return current is not None and (start_time is None or current == start_time)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def listening_pids(port: int) -> list[int]:
    """Pids with a listening TCP socket on ``port`` (any address), read from /proc."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    if not inodes:
        return []
    targets = {f"socket:[{i}]" for i in inodes}
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        pids.append(int(entry.name))
                        break
    return pids


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def terminate(pids: dict[str, tuple[int, int | None]], grace: float = STOP_GRACE_SECONDS) -> list[str]:
    """SIGTERM each process group, SIGKILL what is left after ``grace``; returns names still alive."""
    for pid, start in pids.values():
        if alive(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p, s) for p, s in pids.values()):
        time.sleep(0.1)
    for pid, start in pids.values():
        if alive(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p, s) for p, s in pids.values()):
        time.sleep(0.05)
    return [name for name, (pid, start) in pids.items() if alive(pid, start)]
