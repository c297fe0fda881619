"""``POST /``: the API of the Pensieve modified dash.js client (plain-text level, ``REFRESH`` at the end)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse

from abr_server.api.routes.decisions import report_error_detail
from abr_server.bodies import BodyError, parse_body, validate_parsed
from abr_server.deps import ServiceDep
from abr_server.schemas import UNPROCESSABLE, PensieveReport, problem_responses
from abr_server.sessions import ReportError, check_report

router = APIRouter(tags=["pensieve"])
#: The client sends no session id: one may be given in this header, else `AnonymousPlayers` tells players apart.
SESSION_HEADER = "x-session-id"
#: The answer that makes the client reload its page: the video is over.
REFRESH = "REFRESH"
#: What the client calls the fields a `ReportError` names.
_PENSIEVE_NAMES = {"index": "lastRequest", "quality": "lastquality", "next_chunk_bytes": "nextChunkSize"}
#: The body is parsed by `parse_body` (bounded), so OpenAPI is told its schema here.
_PENSIEVE_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": PensieveReport.model_json_schema()}}}
}


@router.post("/", response_class=PlainTextResponse, openapi_extra=_PENSIEVE_BODY,
             responses=problem_responses(413, 422))  # fmt: skip
async def pensieve(request: Request, service: ServiceDep) -> PlainTextResponse:
    """Decide like Pensieve's server: the body is the client's JSON report, the reply the level index.

    Report ``lastRequest`` = k says chunk k was downloaded; the answer is the level of chunk k + 1, or
    ``REFRESH`` after the video's last chunk.
    """
    try:
        body = parse_body(await request.body(), dict[str, Any], service.settings.max_body_bytes)
        if "pastThroughput" in body:  # the client's end-of-stream summary: nothing to decide
            return PlainTextResponse("0")
        reported = validate_parsed(body, PensieveReport)
    except BodyError:
        service.metrics.errors.labels("invalid_report").inc()
        raise
    if reported.lastRequest >= service.video.n_chunks:  # past the served video's last chunk: it is over
        return PlainTextResponse(REFRESH)
    report = reported.to_report(service.video.n_levels)
    address = request.client.host if request.client else "unknown"
    given = request.headers.get(SESSION_HEADER)
    try:
        check_report(report, service.video)
        session_id = given[:128] if given else service.players.session_for(address, report, service.store.__contains__)
        decision = await service.decide(session_id, report, api="pensieve")
    except ReportError as err:
        named = ReportError(_PENSIEVE_NAMES.get(err.field_name, err.field_name), err.message)
        raise HTTPException(UNPROCESSABLE, detail=report_error_detail(service, named)) from None
    if given is None:
        if decision.end_of_video:
            service.players.forget(address, session_id)
        else:
            service.players.told(address, session_id, decision.quality)
    if decision.end_of_video and reported.has_next_chunk:
        # The client's video goes on after the served one ends (Pensieve's Envivio page has 49 segments, its
        # size files model 48): keep the level for the rest, and REFRESH when the client reports past the end.
        return PlainTextResponse(str(decision.quality))
    return PlainTextResponse(REFRESH if decision.end_of_video else str(decision.quality))
