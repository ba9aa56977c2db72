"""Process and port helpers for the local stack: free loopback ports, readiness waits, stop by PID."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Callable

import httpx

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound then released; the caller binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


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
