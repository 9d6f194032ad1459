"""The local HTTP API. Every route that returns pixels reads a ``FrameBuffer``, which holds only
filtered frames: there is no route, debug or otherwise, that can return a raw frame."""

from __future__ import annotations

import asyncio
import hmac
from importlib import resources
from typing import Optional

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse

from edge_agent import __version__
from edge_agent.service import Agent, CameraWorker
from edge_agent.stats import prometheus_text

COOKIE = "edge_agent_token"
BOUNDARY = "frame"
NO_CAMERA = "no camera configured"
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def create_app(agent: Agent, token: str) -> FastAPI:
    if not token:
        raise ValueError("the API needs a token")
    app = FastAPI(title="edge-agent", version=__version__, docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    expected = token.encode()

    def authorized(request: Request) -> None:
        header = request.headers.get("authorization", "")
        given = header[7:] if header[:7].lower() == "bearer " else request.cookies.get(COOKIE, "")
        if not given or not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def camera(name: str) -> CameraWorker:
        worker = agent.cameras.get(name)
        if worker is None:
            raise HTTPException(status_code=404, detail=f"no camera named {name!r}")
        return worker

    @app.get("/api/health")
    def health() -> JSONResponse:
        cameras = {name: w.health() for name, w in agent.cameras.items()}
        ok = agent.healthy()
        status = "ok" if ok else "degraded" if agent.cameras else NO_CAMERA
        body = {"status": status, "version": __version__, "recognition": agent.models.embedder is not None, "cameras": cameras}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/api/cameras", dependencies=[Depends(authorized)])
    def cameras() -> dict:
        return {"cameras": sorted(agent.cameras)}

    @app.get("/api/cameras/{name}/latest.jpg", dependencies=[Depends(authorized)])
    def latest(name: str) -> Response:
        _, frame = camera(name).buffer.latest()
        if frame is None:
            raise HTTPException(status_code=503, detail="no filtered frame yet")
        return Response(frame.jpeg, media_type="image/jpeg", headers=NO_STORE)

    @app.get("/api/cameras/{name}/stream.mjpg", dependencies=[Depends(authorized)])
    async def stream(name: str, request: Request, max_frames: Optional[int] = None) -> StreamingResponse:
        buffer = camera(name).buffer
        period = 1.0 / agent.config.api.mjpeg_max_fps

        async def parts():
            sent, last = 0, -1
            while max_frames is None or sent < max_frames:
                seq, frame = buffer.latest()
                if frame is None or seq == last:
                    if await request.is_disconnected():
                        return
                    await asyncio.sleep(0.02)
                    continue
                last = seq
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(frame.jpeg)}\r\n\r\n".encode()
                yield head + frame.jpeg + b"\r\n"
                sent += 1
                await asyncio.sleep(period)

        return StreamingResponse(parts(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}", headers=NO_STORE)

    @app.get("/api/stats", dependencies=[Depends(authorized)])
    def stats() -> dict:
        return agent.stats()

    @app.get("/api/registry", dependencies=[Depends(authorized)])
    def registry() -> dict:
        return agent.registry_info()

    @app.get("/metrics", dependencies=[Depends(authorized)])
    def metrics() -> PlainTextResponse:
        info = agent.registry_info()
        extra = {"registry_people": info["count"], "registry_version": info["version"], "recognition_enabled": int(agent.models.embedder is not None)}
        text = prometheus_text({n: w.stats for n, w in agent.cameras.items()}, extra, agent.sync_counters())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        html = resources.files("edge_agent.web").joinpath("index.html").read_text()
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src 'self'"})

    return app
