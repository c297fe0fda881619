"""Build the FastAPI app: settings, lifespan (model, batcher, telemetry), middleware and routes."""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from abr_server.api.routes import admin, cmcd, decisions, health, pensieve, player
from abr_server.api.routes.admin import ADMIN_PREFIX
from abr_server.api.routes.pensieve import SESSION_HEADER
from abr_server.bodies import PAYLOAD_TOO_LARGE, TOO_LARGE
from abr_server.catalogue import Catalogue
from abr_server.cmcd import HEADERS as CMCD_HEADERS
from abr_server.fastpath import DecisionFastPath, reply_json
from abr_server.media import MediaApp
from abr_server.metrics import Metrics
from abr_server.registry import ModelRegistry
from abr_server.schemas import UNPROCESSABLE
from abr_server.service import DecisionService
from abr_server.settings import Settings
from abr_server.shaping import ShapedLink
from policy.learning.ppo import resolve_device
from simulator.capacity import TraceCapacity
from simulator.link import LinkConfig
from traces.io import load_file

Message = MutableMapping[str, Any]


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, whether or not they declare a length."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await reply_json(send, PAYLOAD_TOO_LARGE, _TOO_LARGE_BODY)
            return
        received = 0
        too_large = False

        async def limited() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await reply_json(send, PAYLOAD_TOO_LARGE, _TOO_LARGE_BODY)


_TOO_LARGE_BODY = json.dumps({"detail": TOO_LARGE}).encode()


class _TooLarge(Exception):
    pass


class PlayerCORS:
    """CORS for what players call (no credentials: any listed origin, ``*`` by default); never for admin.

    Preflights are answered for the methods and headers players use; ``Authorization`` is not among
    them, and requests under ``/admin`` pass by the CORS layer, so no page can call an admin route.
    """

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, allow_origins=origins, allow_methods=["GET", "POST", "DELETE"],
                                   allow_headers=["content-type", SESSION_HEADER, *CMCD_HEADERS],
                                   max_age=600)  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(ADMIN_PREFIX):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field; the offending values are not echoed (they may not even be valid JSON)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in errors]  # fmt: skip
    return JSONResponse(status_code=UNPROCESSABLE, content={"detail": detail})


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service, configured by ``settings`` (default: from ``ABR_*`` environment variables)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        catalogue = Catalogue.load(settings)
        video = catalogue.default
        registry = ModelRegistry(settings.models_dir, video, resolve_device(settings.device),
                                 max_batch=settings.max_batch, cuda_graphs=settings.cuda_graphs)  # fmt: skip
        service = DecisionService(settings, video, registry, Metrics(), catalogue)
        await service.start()
        app.state.service = service
        # What start-up built (modules, app, registry) lives as long as the process: keep it out of the
        # garbage collector's scans so that collections on the request path stay short.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="resin-abr decision server", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, _invalid_request)
    if settings.fast_path:
        app.add_middleware(DecisionFastPath)  # innermost: CORS and the body limit still apply
    if settings.cors_origins:
        app.add_middleware(PlayerCORS, origins=settings.cors_origins)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    for module in (decisions, cmcd, pensieve, admin, health, player):
        app.include_router(module.router)
    if settings.media_dir is not None:
        app.state.media = media_app(settings)
        app.mount("/media", app.state.media, name="media")
    return app


def media_app(settings: Settings) -> MediaApp:
    """The /media segment server, paced by ``settings.link_trace`` when one is set."""
    assert settings.media_dir is not None
    link = None
    if settings.link_trace is not None:
        link = ShapedLink(TraceCapacity(load_file(settings.link_trace), LinkConfig().payload_fraction))
    return MediaApp(settings.media_dir, link, delay_ms=settings.media_delay_ms)
