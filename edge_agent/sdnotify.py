"""systemd notification protocol (sd_notify), without a dependency, and a health-gated watchdog.

``Notifier`` sends datagrams to ``$NOTIFY_SOCKET`` (a filesystem path, or an abstract socket
written with a leading ``@``). Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op
that returns False, so the agent runs the same from a shell.

``Watchdog`` pings ``WATCHDOG=1`` every ``interval_s`` only while ``is_healthy()`` returns
True. When the pipeline stalls, the pings stop, ``WatchdogSec=`` runs out and systemd kills and
restarts the service (``Restart=on-failure``): a stalled agent is never left looking alive.

    notifier = Notifier()
    watchdog = Watchdog(notifier, watchdog_interval(default=5.0), is_healthy=pipeline_is_fresh)
    ...start cameras...
    notifier.ready(); watchdog.start()
    ...
    notifier.stopping(); watchdog.stop()
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable, Mapping, Optional

log = logging.getLogger(__name__)


def _address(value: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as a socket address: ``@name`` is the abstract name ``\\0name``."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends sd_notify messages; ``socket_path`` defaults to ``$NOTIFY_SOCKET``."""

    def __init__(self, socket_path: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> None:
        env = os.environ if env is None else env
        self.socket_path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET") or None
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.socket_path)

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram; True when it was sent."""
        if not self.socket_path:
            return False
        message = "\n".join(fields).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message, _address(self.socket_path))
                return True
            except OSError as exc:
                if not self._warned:  # never flood the journal from the watchdog thread
                    log.warning("sd_notify to %s failed: %s", self.socket_path, exc)
                    self._warned = True
                return False

    def ready(self, status: Optional[str] = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: Optional[str] = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_usec(env: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """``$WATCHDOG_USEC`` when it is meant for this process (``$WATCHDOG_PID`` unset or ours)."""
    env = os.environ if env is None else env
    value = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not value:
        return None
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(value)
    except ValueError:
        return None
    return usec if usec > 0 else None


def watchdog_interval(default: Optional[float] = None, env: Optional[Mapping[str, str]] = None) -> Optional[float]:
    """Seconds between pings: half of ``WatchdogSec`` (systemd's advice), else ``default``."""
    usec = watchdog_usec(env)
    return usec / 2e6 if usec else default


class Watchdog:
    """A daemon thread sending ``WATCHDOG=1`` every ``interval_s`` while ``is_healthy()``.

    An exception in ``is_healthy`` counts as unhealthy. ``interval_s=None`` reads
    ``$WATCHDOG_USEC`` (half of it); with neither, ``start()`` does nothing.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval_s: Optional[float],
        is_healthy: Callable[[], bool],
        on_unhealthy: Optional[Callable[[], None]] = None,
    ) -> None:
        self.notifier = notifier
        self.interval_s = interval_s if interval_s is not None else watchdog_interval()
        if self.interval_s is not None and self.interval_s <= 0:
            raise ValueError("watchdog interval must be positive")
        self.is_healthy = is_healthy
        self.on_unhealthy = on_unhealthy
        self.pings = 0
        self.healthy = True
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def check(self) -> bool:
        """One round: ping if healthy; returns whether a ping was sent."""
        try:
            healthy = bool(self.is_healthy())
        except Exception:  # a broken health check must not keep the service looking alive
            log.exception("watchdog health check failed")
            healthy = False
        if not healthy:
            if self.healthy:
                log.error("pipeline unhealthy: watchdog pings stopped, systemd will restart the agent")
                self.notifier.status("unhealthy: a camera pipeline stalled")
                if self.on_unhealthy is not None:
                    self.on_unhealthy()
            self.healthy = False
            return False
        if not self.healthy:
            log.info("pipeline healthy again: watchdog pings resumed")
        self.healthy = True
        if self.notifier.watchdog():
            self.pings += 1
            return True
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(self.interval_s)

    def start(self) -> "Watchdog":
        if self.interval_s is None or self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
