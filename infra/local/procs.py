"""Process and port helpers for the local stack: loopback ports outside the kernel's ephemeral range,
readiness waits, stop by PID."""
from __future__ import annotations

import contextlib
import errno
import math
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
SERVER_RANGE_SIZE = 12_000  # far more than the stack and its revisions ever hold at once
MIN_SERVER_RANGE = 1_000
TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TCP_LISTEN = "0A"  # the st column of a listening socket
FREE_PORT_LEASE_S = 60.0  # long enough for any caller to bind it


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range (low, high), where it also picks the local port of every outgoing
    connection; Linux's default when it cannot be read."""
    try:
        low, high = (int(v) for v in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def server_range(ephemeral: tuple[int, int], size: int = SERVER_RANGE_SIZE) -> range:
    """Up to `size` unprivileged ports just below the ephemeral range (else just above it): a port there is
    never some outgoing connection's local port, so a server can bind it later."""
    low, high = ephemeral
    if low - 1024 >= MIN_SERVER_RANGE:
        return range(max(1024, low - size), low)
    if 65535 - high >= MIN_SERVER_RANGE:
        return range(high + 1, min(65536, high + 1 + size))
    raise RuntimeError(f"no room for server ports outside the ephemeral range {low}-{high}")


def bindable(port: int) -> bool:
    """Whether 127.0.0.1:port can be bound now (no SO_REUSEADDR: a port in TIME_WAIT counts as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


class PortReservations:
    """Hands out loopback ports from `ports` (outside the ephemeral range), each to one holder of this process:
    a port stays reserved until `release`d, or for `lease_s` when the holder binds it soon and never says so
    (`free_port`). A candidate must also be bindable now, which skips ports other processes hold."""

    def __init__(self, ports: range) -> None:
        self.ports = ports
        self._held: dict[int, float] = {}  # port -> monotonic expiry (inf: until released)
        self._lock = threading.Lock()
        self._rng = random.Random()  # seeded from the OS: other processes draw from the same range

    def reserve(self, *, lease_s: float = math.inf, attempts: int = 200) -> int:
        for _ in range(attempts):
            port = self._rng.choice(self.ports)
            with self._lock:
                now = time.monotonic()
                self._held = {p: until for p, until in self._held.items() if until > now}  # leases run out
                if port in self._held or not bindable(port):
                    continue
                self._held[port] = now + lease_s
                return port
        first, last = self.ports.start, self.ports.stop - 1
        raise OSError(errno.EADDRINUSE, f"no free port in {first}-{last} after {attempts} tries")

    def release(self, port: int) -> None:
        with self._lock:
            self._held.pop(port, None)

    def held(self) -> set[int]:
        """The ports reserved now."""
        now = time.monotonic()
        with self._lock:
            return {p for p, until in self._held.items() if until > now}



SERVER_PORTS = PortReservations(server_range(ephemeral_range()))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 outside the ephemeral range, reserved in this process for a minute; the
    caller binds it next (binding port 0 instead would give an ephemeral port, which an outgoing connection
    may take before the server binds it: docs/GOOGLE_APIS.md#revisions-that-really-run)."""
    return SERVER_PORTS.reserve(lease_s=FREE_PORT_LEASE_S)


def listener_inodes(port: int, tables: tuple[Path, ...] = TCP_TABLES) -> set[int]:
    """Inodes of the sockets listening on TCP `port`, any address, IPv4 or IPv6 (the kernel's tables)."""
    inodes = set()
    for table in tables:
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:  # no IPv6
            continue
        for row in rows:
            fields = row.split()  # sl local_address rem_address st ... uid timeout inode
            if len(fields) > 9 and fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def group_sockets(pgid: int) -> set[int]:
    """Inodes of the sockets open in any process of the process group `pgid`."""
    inodes = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:  # after "(comm)": state ppid pgrp
                continue
            fds = list((entry / "fd").iterdir())
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        inodes.update(_socket_inodes(fds))
    return inodes


def _socket_inodes(fds: list[Path]) -> set[int]:
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own fd, for one)
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


def group_listens_on(pgid: int, port: int) -> bool:
    """Whether the listener on TCP `port` belongs to process group `pgid`, not some other process."""
    listeners = listener_inodes(port)
    return bool(listeners) and bool(listeners & group_sockets(pgid))


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll `check` every 50 ms for at most `timeout` seconds; raise with `what` if it never holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process {proc.pid} exited with {proc.returncode} before it was ready")
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready within {timeout:.0f}s")


def wait_http(url: str, *, timeout: float = 20.0, proc: subprocess.Popen | None = None, ok: tuple[int, ...] = (200,)) -> None:
    wait_until(lambda: httpx.get(url, timeout=1.0).status_code in ok, timeout=timeout, what=url, proc=proc)


def stop(proc: subprocess.Popen, *, grace: float = 5.0) -> None:
    """Stop a child by its PID (its process group when it leads one): SIGTERM, then SIGKILL after `grace`."""
    if proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
        target = (lambda sig: os.killpg(pgid, sig)) if pgid == proc.pid else (lambda sig: os.kill(proc.pid, sig))
        target(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            target(signal.SIGKILL)
            proc.wait(timeout=grace)
    except ProcessLookupError:
        pass
