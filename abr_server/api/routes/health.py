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
async def readyz(service: ServiceDep) -> dict[str, object]:
    """Ready to decide (a model or the fallback rule is loaded: always, once started).

    Telemetry is reported but does not make the server unready: a disk that fills up on every replica
    must not take them all out of the load balancer while they can still answer players. Alert on
    ``telemetry`` (or on /metrics) instead.
    """
    return {"ready": True, "model_version": service.slot.current.version, "sessions": len(service.store),
            "telemetry_ok": service.telemetry_state() == "ok", "telemetry": service.telemetry_state()}  # fmt: skip


@router.get("/metrics", response_class=PlainTextResponse, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(service: ServiceDep) -> Response:
    """Prometheus exposition."""
    service.observe_gauges()
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
