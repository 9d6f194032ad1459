"""The API's HTTP server: uvicorn, hardened for hostile local processes and web pages.

uvicorn's defaults trust the client: httptools buffers a header of any size (a 200 MB header
blocked the event loop for ~27 s), a request head may take forever to arrive, and connections
are accepted until the process runs out of file descriptors. Here the h11 parser bounds the
request line and headers (``api.max_header_bytes``: larger heads get a 400 and a closed
connection before the rest is read), every request head has a deadline, and connections past
``api.max_connections`` evict the longest-idle one (or are refused when all are busy). It also stops cleanly on SIGTERM (see ``ApiServer``).
"""

from __future__ import annotations

import resource
import signal
import socket
import ssl
import threading
from contextlib import contextmanager
from typing import Callable, Generator, Optional

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge_agent.config import ApiConfig
from edge_agent.preflight import PreflightError

# File descriptors the agent needs besides API connections: models, cameras, SQLite, MQTT, logs.
RESERVED_FDS = 256
# Open MJPEG streams never finish by themselves: on shutdown they get this long, then are cut.
SHUTDOWN_GRACE_S = 2
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a deadline for each request head.

    At the cap, a new connection evicts the one that has waited longest for a request head (an
    idle or slow client); only when every connection is busy serving is the new one refused. So
    a flood of idle connections cannot lock out a health check or a viewer."""

    max_connections = 512
    head_timeout_s = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = None
        self._waiting_since = self.loop.time()
        if len(self.connections) > self.max_connections:
            idle = [c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol) and c._waiting()]
            if not idle:
                transport.write(BUSY)
                transport.close()
                return
            min(idle, key=lambda c: c._waiting_since).transport.close()
        self._arm_head_timer()

    def _waiting(self) -> bool:
        """No request in progress: waiting for a head, and not already closing."""
        return (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing()

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._waiting_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_expired)

    def _head_expired(self) -> None:
        """No complete request head since the connection opened or the last response ended."""
        if self._waiting():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)


def guarded_protocol(api: ApiConfig) -> type:
    return type("GuardedH11", (GuardedH11Protocol,), {"max_connections": api.max_connections, "head_timeout_s": api.header_timeout_s})


class ApiServer(uvicorn.Server):
    """A uvicorn server that leaves SIGTERM and SIGINT handled once it has stopped.

    uvicorn re-raises the signal after its loop ends, which kills the process before the
    caller's ``finally`` runs: the agent's shutdown (STOPPING=1, cameras and sync closed) was
    skipped on every ``systemctl stop``. ``stop_signal`` says which signal stopped it."""

    stop_signal: Optional[int] = None
    on_exit: Optional[Callable[[], None]] = None  # called once, from the signal handler

    def handle_exit(self, sig: int, frame) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first and self.on_exit is not None:
            self.on_exit()

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
        if self._captured_signals:
            self.stop_signal = self._captured_signals[0]


def check_tls(api: ApiConfig) -> None:
    """The certificate and key load and belong together (checked before any model is loaded)."""
    if api.tls_cert is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(api.tls_cert), str(api.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise PreflightError(f"api.tls_cert {api.tls_cert} / api.tls_key {api.tls_key}: cannot be used ({getattr(exc, 'strerror', None) or exc})") from None


def ensure_file_limit(api: ApiConfig) -> None:
    """Connections are capped below the open-file limit, so a flood is refused, not fatal."""
    need = api.max_connections + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise PreflightError(
            f"api.max_connections {api.max_connections} needs {need} open files but the limit is {hard}: "
            "lower api.max_connections or raise LimitNOFILE"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: a busy port is an error before anything is announced."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
    except (OSError, UnicodeError) as exc:
        raise PreflightError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise PreflightError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def build_server(app, api: ApiConfig) -> ApiServer:
    tls = {"ssl_certfile": str(api.tls_cert), "ssl_keyfile": str(api.tls_key)} if api.tls_cert else {}
    config = uvicorn.Config(
        app,
        host=api.host,
        port=api.port,
        http=guarded_protocol(api),
        ws="none",
        lifespan="off",
        h11_max_incomplete_event_size=api.max_header_bytes,
        timeout_keep_alive=api.keepalive_timeout_s,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        server_header=False,
        log_level="warning",
        access_log=False,
        **tls,
    )
    return ApiServer(config)

