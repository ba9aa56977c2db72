"""httpx clients for the Cloud Run stand-in's many threads (image checks, the proxy): each thread has a client
of its own while it uses it, taken from the idle ones or newly made.

One client shared by threads shares httpcore's connection pool, which (as of httpcore 1.0.9) can close a
keep-alive connection it has just handed to another thread while it still looks idle; that thread's read then
fails with "[Errno 9] Bad file descriptor" (docs/GOOGLE_APIS.md#revisions-that-really-run).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx


class ClientPool:
    """Lends each caller a client of its own for the length of a `with pool.client() as http:` block."""

    def __init__(self, new_client: Callable[[], httpx.Client], owner: str) -> None:
        self._new_client = new_client
        self.owner = owner  # who uses the clients, for the error once closed
        self._lock = threading.Lock()
        self._idle: list[httpx.Client] = []
        self._closed = False

    @contextmanager
    def client(self) -> Iterator[httpx.Client]:
        http = self._checkout()
        try:
            yield http
        finally:
            self._checkin(http)

    def close(self) -> None:
        """Close the idle clients now, and each client still lent when it comes back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for client in idle:
            client.close()

    def _checkout(self) -> httpx.Client:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.owner} is closed (the stand-in stopped)")
            if self._idle:
                return self._idle.pop()
        return self._new_client()

    def _checkin(self, client: httpx.Client) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(client)
                return
        client.close()
