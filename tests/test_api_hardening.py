"""The API against a hostile local client: `edge-agent run` in its own process, real uvicorn,
raw sockets and real HTTP (huge heads, idle floods, foreign Host headers, cookies, TLS)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from edge_agent.api_guard import Sessions, cookie_name
from edge_agent.cli import main
from tests.mqtt_broker import make_certs
from tests.test_api import ROUTES, TOKEN, RunningAgent

HEAD_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def write_config(path: Path, api: dict) -> Path:
    path.write_text(yaml.safe_dump({"api": api}))
    return path


@pytest.fixture(scope="module")
def agent(shared_dir, models_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hardened")
    config = write_config(folder / "agent.yaml", {"header_timeout_s": HEAD_TIMEOUT_S, "keepalive_timeout_s": 1, "max_connections": MAX_CONNECTIONS})
    running = RunningAgent(str(shared_dir / "video/short_hamilton_clip.mp4"), models_dir, folder / "data", config)
    running.wait_ready()
    yield running
    running.stop()


def connect(agent: RunningAgent) -> socket.socket:
    return socket.create_connection(("127.0.0.1", agent.port), timeout=5)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_a_100_mb_header_is_refused_early_and_health_keeps_answering(agent):
    before = rss_mb(agent.proc.pid)
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            start = time.perf_counter()
            assert httpx.get(agent.url + "/api/health", timeout=5).status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    sock = connect(agent)
    reply = b""
    sent_mb = 0
    try:
        sock.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        chunk = b"a" * (1 << 20)
        for sent_mb in range(1, 101):
            sock.sendall(chunk)
            try:
                reply += sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    time.sleep(0.5)
    done.set()
    prober.join(10)
    assert sent_mb < 100, "the server read a 100 MB header to its end"
    assert not reply or reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert latencies and max(latencies) < 1.0, latencies
    assert rss_mb(agent.proc.pid) - before < 50


def test_incomplete_and_idle_connections_are_closed(agent):
    slow = [connect(agent) for _ in range(20)]
    for sock in slow:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the head never ends
    idle = connect(agent)
    idle.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert idle.recv(4096).startswith(b"HTTP/1.1 200")
    try:
        assert all(closed_by_server(s, HEAD_TIMEOUT_S + 2) for s in slow), "a slow request head kept its connection"
        assert closed_by_server(idle, 3), "an idle keep-alive connection stayed open"
    finally:
        for sock in slow + [idle]:
            sock.close()


def test_a_connection_flood_cannot_lock_out_health_or_exhaust_files(agent):
    """1,100 idle connections once made health fail with resets (the open-file limit ran out)."""
    flood = [connect(agent) for _ in range(MAX_CONNECTIONS + 30)]
    try:
        start = time.perf_counter()
        assert httpx.get(agent.url + "/api/health", timeout=5).status_code == 200  # evicts the longest-idle one
        assert time.perf_counter() - start < 1.0
        evicted = sum(closed_by_server(sock, 0.05) for sock in flood)
        assert evicted >= 30, evicted
        open_fds = len(list(Path(f"/proc/{agent.proc.pid}/fd").iterdir()))
        assert open_fds < MAX_CONNECTIONS + 256
    finally:
        for sock in flood:
            sock.close()


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(agent):
    streams = []
    try:
        for _ in range(MAX_CONNECTIONS + 5):
            sock = connect(agent)
            sock.sendall(f"GET /api/cameras/demo/stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
            streams.append(sock)
        replies = []
        for sock in streams:
            sock.settimeout(5)
            try:
                replies.append(sock.recv(64))
            except (socket.timeout, ConnectionResetError):
                replies.append(b"")
        assert sum(r.startswith(b"HTTP/1.1 200") for r in replies) <= MAX_CONNECTIONS
        assert sum(r.startswith(b"HTTP/1.1 503") for r in replies) >= 5
    finally:
        for sock in streams:
            sock.close()


def test_foreign_host_headers_are_refused(agent):
    """DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends Host: evil.example."""
    for path in ("/api/health", "/api/stats", "/api/cameras/demo/latest.jpg"):
        r = httpx.get(agent.url + path, headers={**AUTH, "Host": f"evil.example:{agent.port}"})
        assert r.status_code == 421, path
        assert b"\xff\xd8" not in r.content
    for host in (f"127.0.0.1:{agent.port}", f"localhost:{agent.port}", "localhost"):
        assert httpx.get(agent.url + "/api/stats", headers={**AUTH, "Host": host}).status_code == 200, host
    sock = connect(agent)  # HTTP/1.0 without any Host
    sock.sendall(b"GET /api/health HTTP/1.0\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 421")
    sock.close()


def test_schema_needs_the_token_and_describes_the_routes(agent):
    assert httpx.get(agent.url + "/api/openapi.json").status_code == 401
    spec = httpx.get(agent.url + "/api/openapi.json", headers=AUTH).json()
    assert set(spec["paths"]) == ROUTES | {"/api/session"}
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "application/json" not in metrics and any(t.startswith("text/plain") for t in metrics)
    for path in ("/api/cameras/{name}/latest.jpg", "/api/cameras/{name}/stream.mjpg"):
        responses = spec["paths"][path]["get"]["responses"]
        assert "404" in responses and "401" in responses, path
    assert "image/jpeg" in spec["paths"]["/api/cameras/{name}/latest.jpg"]["get"]["responses"]["200"]["content"]


def test_every_response_is_no_store_and_anonymous(agent):
    for path in ("/api/health", "/api/stats", "/api/registry", "/api/cameras", "/metrics", "/api/openapi.json", "/", "/nope"):
        for headers in (AUTH, {}):
            r = httpx.get(agent.url + path, headers=headers)
            assert r.headers.get("cache-control") == "no-store", (path, r.status_code)
            assert "server" not in r.headers, (path, r.headers.get("server"))


def test_the_page_session_is_a_signed_httponly_cookie_not_the_token(agent):
    assert httpx.post(agent.url + "/api/session").status_code == 401
    r = httpx.post(agent.url + "/api/session", headers=AUTH)
    assert r.status_code == 204
    name = cookie_name(agent.port)
    header = next(h for h in r.headers.get_list("set-cookie") if h.startswith(name + "="))
    assert any(h.startswith('edge_agent_token=""') and "Max-Age=0" in h for h in r.headers.get_list("set-cookie"))  # old cookie cleared
    attributes = {a.strip().split("=")[0].lower(): a.strip() for a in header.split(";")[1:]}
    assert "httponly" in attributes and attributes["path"] == "Path=/" and attributes["samesite"].lower() == "samesite=strict"
    assert "secure" not in attributes  # plain HTTP here; the TLS test checks Secure
    value = r.cookies[name]
    assert TOKEN not in value and TOKEN not in header
    assert httpx.get(agent.url + "/api/stats", cookies={name: value}).status_code == 200
    forged = value[:-1] + ("0" if value[-1] != "0" else "1")
    assert httpx.get(agent.url + "/api/stats", cookies={name: forged}).status_code == 401
    assert httpx.get(agent.url + "/api/stats", cookies={"edge_agent_token": TOKEN}).status_code == 401  # the old raw-token cookie
    other_server = Sessions(900).issue()  # signed by another process's key
    assert httpx.get(agent.url + "/api/stats", cookies={name: other_server}).status_code == 401
    assert httpx.get(agent.url + "/api/stats", cookies={cookie_name(agent.port + 1): value}).status_code == 401


def test_sessions_expire_and_are_renewed():
    sessions = Sessions(100)
    value = sessions.issue(now=1000.0)
    assert sessions.remaining(value, now=1050.0) == 50
    assert sessions.remaining(value, now=1101.0) is None
    assert not sessions.renewal_due(sessions.remaining(value, now=1040.0)) and sessions.renewal_due(sessions.remaining(value, now=1060.0))
    assert sessions.remaining("123.abc", now=0) is None and sessions.remaining("", now=0) is None


# ---------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_tls_api_serves_https_with_a_secure_cookie(shared_dir, models_dir, certs, tmp_path):
    config = write_config(tmp_path / "tls.yaml", {"tls_cert": str(certs["server_cert"]), "tls_key": str(certs["server_key"])})
    agent = RunningAgent(str(shared_dir / "video/short_hamilton_clip.mp4"), models_dir, tmp_path / "data", config)
    url = f"https://127.0.0.1:{agent.port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            assert agent.proc.poll() is None, agent.output()
            try:
                if httpx.get(url + "/api/health", verify=ssl.create_default_context(cafile=str(certs["ca"])), timeout=2).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        r = httpx.post(url + "/api/session", headers=AUTH, verify=ssl.create_default_context(cafile=str(certs["ca"])))
        session = next(h for h in r.headers.get_list("set-cookie") if h.startswith(cookie_name(agent.port) + "="))
        assert r.status_code == 204 and "; secure" in session.lower()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{agent.port}/api/health", timeout=3)  # no plain HTTP beside it
        assert f"live anonymized view at {url}/" in agent.output()
    finally:
        agent.stop()


def test_bad_tls_settings_are_refused_before_the_models_load(certs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_AGENT_MODELS", str(tmp_path / "no-models"))  # a model load would fail differently
    monkeypatch.setenv("EDGE_AGENT_DATA_DIR", str(tmp_path / "data"))
    cases = {
        "cert-only": ({"tls_cert": str(certs["server_cert"])}, "tls_cert and tls_key go together"),
        "missing": ({"tls_cert": str(tmp_path / "none.pem"), "tls_key": str(certs["server_key"])}, "does not exist"),
        "mismatch": ({"tls_cert": str(certs["server_cert"]), "tls_key": str(certs["client_key"])}, "cannot be used"),
    }
    for name, (api, expected) in cases.items():
        config = write_config(tmp_path / f"{name}.yaml", api)
        code = main(["--config", str(config), "run", "--source", "0", "--port", "0"])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and "Traceback" not in err, (name, err)


def test_the_unit_file_limit_covers_the_connection_cap():
    from edge_agent.config import ApiConfig
    from edge_agent.http_server import RESERVED_FDS
    from tests.test_systemd import _unit_settings

    assert int(_unit_settings()["LimitNOFILE"][0]) >= ApiConfig().max_connections + RESERVED_FDS


def test_host_policy_for_loopback_lan_and_wildcard_binds():
    from edge_agent.api_guard import HostPolicy
    from edge_agent.config import ApiConfig

    loopback = HostPolicy(ApiConfig())
    assert loopback.allows("127.0.0.1:8080") and loopback.allows("localhost") and loopback.allows("[::1]:8080")
    assert not loopback.allows("evil.example") and not loopback.allows("10.0.0.5") and not loopback.allows(None)
    lan = HostPolicy(ApiConfig(host="192.168.1.5", allowed_hosts=["Camera-12.site.example"]))
    assert lan.allows("192.168.1.5:8080") and lan.allows("camera-12.site.example:8080")
    assert not lan.allows("192.168.1.6") and not lan.allows("rebind.evil.example")
    wildcard = HostPolicy(ApiConfig(host="0.0.0.0"))
    assert wildcard.allows("10.1.2.3:8080") and wildcard.allows("[fe80::1]") and wildcard.allows(socket.gethostname())
    assert not wildcard.allows("rebind.evil.example:8080")
