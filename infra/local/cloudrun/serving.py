"""A WSGI app served by werkzeug on its own thread, for the stand-in's REST front and its proxy."""
from __future__ import annotations

import threading
from collections.abc import Callable

from werkzeug.serving import BaseWSGIServer, make_server

from .rest import QuietHandler


class ThreadedWsgi:
    """`start()` binds `host:port` (0: a free port, then in `port`) and serves, one thread per request;
    `stop()` ends it and may be followed by another `start()`."""

    def __init__(self, app: Callable, host: str, port: int, name: str) -> None:
        self.app, self.host, self.port, self.name = app, host, port, name
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        self._server = make_server(self.host, self.port, self.app, threaded=True, request_handler=QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
