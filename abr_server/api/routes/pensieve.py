"""``POST /``: the API of the Pensieve modified dash.js client (plain-text level, ``REFRESH`` at the end)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse

from abr_server.api.routes.decisions import report_error_detail
from abr_server.bodies import BodyError, parse_body, validate_parsed
from abr_server.deps import ServiceDep
from abr_server.schemas import UNPROCESSABLE, PensieveReport, problem_responses
from abr_server.sessions import ReportError

router = APIRouter(tags=["pensieve"])
#: The client sends no session id: one may be given in this header, else the client address is used.
SESSION_HEADER = "x-session-id"
#: The body is parsed by `parse_body` (bounded), so OpenAPI is told its schema here.
_PENSIEVE_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": PensieveReport.model_json_schema()}}}
}


@router.post("/", response_class=PlainTextResponse, openapi_extra=_PENSIEVE_BODY,
             responses=problem_responses(413, 422))  # fmt: skip
async def pensieve(request: Request, service: ServiceDep) -> PlainTextResponse:
    """Decide like Pensieve's server: the body is the client's JSON report, the reply the level index."""
    try:
        body = parse_body(await request.body(), dict[str, Any], service.settings.max_body_bytes)
        if "pastThroughput" in body:  # the client's end-of-stream summary: nothing to decide
            return PlainTextResponse("0")
        report = validate_parsed(body, PensieveReport).to_report()
    except BodyError:
        service.metrics.errors.labels("invalid_report").inc()
        raise
    client = request.client.host if request.client else "unknown"
    session_id = request.headers.get(SESSION_HEADER, f"pensieve:{client}")[:128]
    try:
        decision = await service.decide(session_id, report, api="pensieve")
    except ReportError as err:
        raise HTTPException(UNPROCESSABLE, detail=report_error_detail(service, err)) from None
    return PlainTextResponse("REFRESH" if decision.end_of_video else str(decision.quality))
