"""Probes and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from abr_server.deps import ServiceDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(service: ServiceDep, response: Response) -> dict[str, object]:
    """A model is loaded and telemetry is writable."""
    telemetry_ok = service.telemetry is None or service.telemetry.failed == 0
    ready = telemetry_ok
    response.status_code = 200 if ready else 503
    return {"ready": ready, "model_version": service.slot.current.version, "sessions": len(service.store),
            "telemetry_ok": telemetry_ok}  # fmt: skip


@router.get("/metrics", response_class=PlainTextResponse, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(service: ServiceDep) -> Response:
    """Prometheus exposition."""
    service.metrics.sessions.set(len(service.store))
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
