"""The local HTTP API. Every route that returns pixels reads a ``FrameBuffer``, which holds only
filtered frames: there is no route, debug or otherwise, that can return a raw frame.

Everything but ``/api/health`` needs the bearer token or the page's session cookie
(``POST /api/session`` trades the token for it; see ``api_guard``)."""

from __future__ import annotations

import asyncio
import hmac
import threading
from importlib import resources
from typing import Optional

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse

from edge_agent import __version__
from edge_agent.api_guard import GuardMiddleware, HostPolicy, Sessions, cookie_name
from edge_agent.config import ApiConfig
from edge_agent.service import Agent, CameraWorker
from edge_agent.stats import prometheus_text

BOUNDARY = "frame"
NO_CAMERA_STATUS = "no camera configured"
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
# Documented in the schema: what a client of each route may get besides its 200.
UNAUTHORIZED = {401: {"description": "missing or wrong bearer token, or no valid session"}}
UNKNOWN_CAMERA = {404: {"description": "no camera with that name"}}
NO_FRAME = {503: {"description": "the camera has not produced a filtered frame yet"}}


def create_app(agent: Agent, token: str, api: Optional[ApiConfig] = None) -> FastAPI:
    if not token:
        raise ValueError("the API needs a token")
    api = api or agent.config.api
    app = FastAPI(title="edge-agent", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(GuardMiddleware, policy=HostPolicy(api))
    expected = token.encode()
    sessions = Sessions(api.session_ttl_s)
    # Set when the server begins to stop: open MJPEG streams end themselves instead of being cut.
    app.state.closing = threading.Event()

    def start_session(request: Request, response: Response) -> None:
        response.set_cookie(
            cookie_name(request.scope["server"][1]), sessions.issue(), max_age=api.session_ttl_s, path="/",
            httponly=True, samesite="strict", secure=request.url.scheme == "https",
        )
        response.delete_cookie("edge_agent_token", path="/")  # the raw token earlier versions left in the browser

    def authorized(request: Request, response: Response) -> None:
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            if hmac.compare_digest(header[7:].encode(), expected):
                return
        else:
            session = request.cookies.get(cookie_name(request.scope["server"][1]))
            left = sessions.remaining(session) if session else None
            if left is not None:
                if sessions.renewal_due(left):
                    start_session(request, response)
                return
        raise HTTPException(status_code=401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def camera(name: str) -> CameraWorker:
        worker = agent.cameras.get(name)
        if worker is None:
            raise HTTPException(status_code=404, detail=f"no camera named {name!r}")
        return worker

    @app.get("/api/health", responses={503: {"description": "degraded: a camera has no recent frame"}})
    def health() -> JSONResponse:
        cameras = {name: w.health() for name, w in agent.cameras.items()}
        ok = agent.healthy()
        consent = agent.consent()
        ok = ok and not (consent["registered_hidden"] and agent.models.embedder is not None)
        status = "ok" if ok else "degraded" if agent.cameras else NO_CAMERA_STATUS
        body = {"status": status, "version": __version__, "recognition": agent.models.embedder is not None,
                "cameras": cameras, "consent": consent}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.post("/api/session", status_code=204, response_class=Response, dependencies=[Depends(authorized)], responses=UNAUTHORIZED)
    def session(request: Request, response: Response) -> None:
        """Trade the bearer token for the page's session cookie."""
        start_session(request, response)

    @app.get("/api/openapi.json", include_in_schema=False, dependencies=[Depends(authorized)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/api/cameras", dependencies=[Depends(authorized)], responses=UNAUTHORIZED)
    def cameras() -> dict:
        return {"cameras": sorted(agent.cameras)}

    @app.get("/api/cameras/{name}/latest.jpg", dependencies=[Depends(authorized)], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}, "description": "the newest filtered frame"}, **UNAUTHORIZED, **UNKNOWN_CAMERA, **NO_FRAME})
    def latest(name: str) -> Response:
        _, frame = camera(name).buffer.latest()
        if frame is None:
            raise HTTPException(status_code=503, detail="no filtered frame yet")
        return Response(frame.jpeg, media_type="image/jpeg", headers=NO_STORE)

    @app.get("/api/cameras/{name}/stream.mjpg", dependencies=[Depends(authorized)], response_class=StreamingResponse,
             responses={200: {"content": {f"multipart/x-mixed-replace; boundary={BOUNDARY}": {}}, "description": "filtered frames as MJPEG"},
                        **UNAUTHORIZED, **UNKNOWN_CAMERA})
    async def stream(name: str, request: Request, max_frames: Optional[int] = None) -> StreamingResponse:
        buffer = camera(name).buffer
        period = 1.0 / agent.config.api.mjpeg_max_fps

        async def parts():
            sent, last = 0, -1
            while (max_frames is None or sent < max_frames) and not app.state.closing.is_set():
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

    @app.get("/api/stats", dependencies=[Depends(authorized)], responses=UNAUTHORIZED)
    def stats() -> dict:
        return agent.stats()

    @app.get("/api/registry", dependencies=[Depends(authorized)], responses=UNAUTHORIZED)
    def registry() -> dict:
        return agent.registry_info()

    @app.get("/metrics", dependencies=[Depends(authorized)], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain; version=0.0.4": {}}, "description": "Prometheus text format"}, **UNAUTHORIZED})
    def metrics() -> PlainTextResponse:
        info = agent.registry_info()
        extra = {"registry_people": info["count"], "registry_version": info["version"], "recognition_enabled": int(agent.models.embedder is not None)}
        extra["registered_people_hidden"] = int(bool(agent.consent()["registered_hidden"]))
        text = prometheus_text({n: w.stats for n, w in agent.cameras.items()}, extra, agent.sync_counters())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        html = resources.files("edge_agent.web").joinpath("index.html").read_text()
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src 'self'"})

    return app
