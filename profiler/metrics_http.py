"""Serving a ``/metrics`` WSGI app on a thread: the probe agent's (``probes.exporter``) and the
step engine's (``dualscope steps --follow --metrics-port``). Binds IPv4 or IPv6 addresses
(the address decides the socket family), port 0 picks a free port, no access log; a port that
cannot be bound is one :class:`~profiler.errors.InputError` naming the flags to change."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .errors import InputError

__all__ = ["MetricsServer"]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        pass


class MetricsServer:
    """``app`` served on ``addr:port`` by a daemon thread from construction until
    :meth:`close`; :attr:`port` is the bound port, :attr:`url` the ``/metrics`` URL."""

    def __init__(self, app: Callable[..., Any], port: int, addr: str = "127.0.0.1", *,
                 name: str = "dualscope-metrics") -> None:
        try:
            info = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM,
                                      flags=socket.AI_PASSIVE)[0]
            family, sockaddr = info[0], info[4]  # IPv6 addresses need an AF_INET6 server
            server_class = type("_Server", (_Server,), {"address_family": family})
            self._server: Any = make_server(str(sockaddr[0]), port, app, server_class,
                                            handler_class=_Quiet)
        except OSError as e:
            raise InputError(f"cannot serve /metrics on {addr}:{port} ({e.strerror or e}); "
                             "pass another --metrics-port (0 picks a free one) or "
                             "--metrics-addr") from None
        threading.Thread(target=self._server.serve_forever, name=name, daemon=True).start()
        self.port = int(self._server.server_port)
        self.addr = addr

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
