"""What stands between the API and a hostile local process or web page: the Host check (DNS
rebinding), response headers that keep filtered frames out of caches, and the page's session.

The browser never holds the API token: the page trades it once for a session cookie that is
HttpOnly (no script reads it), SameSite=Strict, Path=/, Secure over TLS, expires, and is signed
with a key that exists only in this server process. Cookies are not bound to a port, so a page
served from another port of the same host may receive the cookie; what it gets is useless
anywhere but here and dies with the session (or with this process), unlike the token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from typing import Optional

from edge_agent.config import ApiConfig

WILDCARD = ("0.0.0.0", "::", "")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _host_name(header: str) -> str:
    """The host of a Host header, without its port (``[::1]:8080`` -> ``::1``), lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostPolicy:
    """Which Host headers are this server: the configured names, the bind address, localhost.

    A name the browser resolved to us (DNS rebinding) arrives as that name and is refused. A
    server bound to every interface also answers to any IP literal: a page whose origin is an IP
    address is that address, so no rebinding is possible through it."""

    def __init__(self, api: ApiConfig) -> None:
        bind = api.host.strip("[]").lower()
        self.names = {n.lower() for n in api.allowed_hosts} | set(LOOPBACK_NAMES)
        self.any_ip = bind in WILDCARD
        if self.any_ip:
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        else:
            self.names.add(bind)

    def allows(self, header: Optional[str]) -> bool:
        host = _host_name(header or "")
        if not host:
            return False
        return host in self.names or (self.any_ip and _is_ip(host))


class GuardMiddleware:
    """Pure ASGI (streams pass through untouched): refuses foreign Host headers, and adds the
    security headers to every response (no-store: frames, stats and the schema are never cached)."""

    def __init__(self, app, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        if not self.policy.allows(host):
            body = b'{"detail":"unknown Host: this server answers only to its configured names"}'
            await send({"type": "http.response.start", "status": 421, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS]})
            await send({"type": "http.response.body", "body": body})
            return

        async def guarded_send(message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in SECURITY_HEADERS if h[0] not in present]
            await send(message)

        await self.app(scope, receive, guarded_send)


class Sessions:
    """Signed, expiring session values: ``<expiry>.<nonce>.<mac>``, the key random per process."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._key = secrets.token_bytes(32)

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, now: Optional[float] = None) -> str:
        payload = f"{int((now or time.time()) + self.ttl_s)}.{secrets.token_urlsafe(12)}"
        return f"{payload}.{self._mac(payload)}"

    def remaining(self, value: str, now: Optional[float] = None) -> Optional[float]:
        """Seconds this session has left; None when it is forged, malformed or expired."""
        payload, _, mac = value.rpartition(".")
        expiry = payload.split(".", 1)[0]
        if not payload or not expiry.isdigit() or not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        left = int(expiry) - (now or time.time())
        return left if left > 0 else None

    def renewal_due(self, left: float) -> bool:
        """Past half its life: an open page (polling every 2 s) gets a fresh cookie."""
        return left < self.ttl_s / 2


def cookie_name(port: Optional[int]) -> str:
    """One cookie per port: two agents on one host do not log each other out."""
    return f"edge_agent_session_{port}"
