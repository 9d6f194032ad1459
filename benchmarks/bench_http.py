"""What the API hardening costs: the hardened server (h11 with bounded heads, head deadline,
connection cap, Host check and security headers) against stock uvicorn (httptools), side by side.

    python benchmarks/bench_http.py [--rounds 3] [--requests 1000]

Each server runs in its own process on a free loopback port with the same small FastAPI app: a
JSON route like /api/stats, a 60 kB JPEG-sized body like latest.jpg, and an MJPEG-like stream.
Rounds alternate between the two (the machine is noisy); the table gives medians and the ratio
of the rates stock / hardened (above 1 = the hardened server is slower). The client is one
Python httpx connection, so small-request rates are partly the client's.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BODY = bytes(range(256)) * 240  # ~60 kB, the size of a 640x360 JPEG
PARTS = 200


def make_app(hardened: bool):
    from fastapi import FastAPI
    from fastapi.responses import Response, StreamingResponse

    app = FastAPI()

    @app.get("/api/stats")
    def stats() -> dict:
        return {"cameras": {"demo": {"fps": 15.0, "frames_out": 1234, "faces_seen": 56}}}

    @app.get("/latest.jpg")
    def latest() -> Response:
        return Response(BODY, media_type="image/jpeg")

    @app.get("/stream.mjpg")
    def stream() -> StreamingResponse:
        def parts():
            for _ in range(PARTS):
                yield b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + BODY + b"\r\n"

        return StreamingResponse(parts(), media_type="multipart/x-mixed-replace; boundary=frame")

    if hardened:
        from edge_agent.api_guard import GuardMiddleware, HostPolicy
        from edge_agent.config import ApiConfig

        app.add_middleware(GuardMiddleware, policy=HostPolicy(ApiConfig()))
    return app


def serve(kind: str, port: int) -> None:
    import uvicorn

    app = make_app(kind == "hardened")
    if kind == "hardened":
        from edge_agent.config import ApiConfig
        from edge_agent.http_server import build_server

        server = build_server(app, ApiConfig(port=port))
    else:
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    server.run()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            httpx.get(url + "/api/stats", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{kind} server did not start")


def measure(url: str, requests: int) -> dict[str, float]:
    import httpx

    with httpx.Client(base_url=url, timeout=30) as client:  # keep-alive, like a dashboard
        t = time.perf_counter()
        for _ in range(requests):
            client.get("/api/stats").raise_for_status()
        json_rps = requests / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(requests // 4):
            assert len(client.get("/latest.jpg").content) == len(BODY)
        jpeg_rps = (requests // 4) / (time.perf_counter() - t)
        t = time.perf_counter()
        with client.stream("GET", "/stream.mjpg") as r:
            size = sum(len(c) for c in r.iter_bytes())
        stream_mbs = size / 1e6 / (time.perf_counter() - t)
    return {"JSON requests/s": json_rps, "60 kB requests/s": jpeg_rps, "MJPEG MB/s": stream_mbs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--serve", choices=["hardened", "stock"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    results: dict[str, dict[str, list[float]]] = {"hardened": {}, "stock": {}}
    servers = {kind: start(kind) for kind in results}
    try:
        for _ in range(args.rounds):
            for kind, (_, url) in servers.items():
                for name, value in measure(url, args.requests).items():
                    results[kind].setdefault(name, []).append(value)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)
    print(f"API server, {args.rounds} alternating rounds, medians (loopback, one keep-alive client)")
    print(f"{'metric':<20} {'hardened':>10} {'stock':>10} {'stock/hardened':>15}")
    for name in results["stock"]:
        hardened, stock = statistics.median(results["hardened"][name]), statistics.median(results["stock"][name])
        print(f"{name:<20} {hardened:>10.1f} {stock:>10.1f} {stock / hardened:>15.2f}")


if __name__ == "__main__":
    main()
