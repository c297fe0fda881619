"""The v1 decision API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status

from abr_server.bodies import BodyError, parse_body
from abr_server.deps import ServiceDep
from abr_server.schemas import UNPROCESSABLE, ChunkReport, Decision, problem_responses
from abr_server.service import DecisionService
from abr_server.sessions import ReportError

router = APIRouter(prefix="/v1", tags=["decisions"])

#: What a session id may be: 1-128 characters, letters, digits and ``._:-``.
SESSION_ID = r"[A-Za-z0-9._:-]{1,128}"
SESSION_ID_PATTERN = rf"^{SESSION_ID}$"
SessionId = Annotated[str, Path(min_length=1, max_length=128, pattern=SESSION_ID_PATTERN)]


def report_error_detail(service: DecisionService, err: ReportError) -> list[dict[str, object]]:
    """The 422 detail of a report that does not fit the session or the video (and count it)."""
    service.metrics.errors.labels("invalid_report").inc()
    return [{"loc": ["body", err.field_name], "msg": str(err), "type": "value_error"}]


#: The body is parsed by `parse_body` (bounded, as on the fast path), so OpenAPI is told its schema here.
_REPORT_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": ChunkReport.model_json_schema()}}}
}


@router.post("/sessions/{session_id}/decision", response_model=Decision, openapi_extra=_REPORT_BODY,
             responses=problem_responses(413))  # fmt: skip
async def decision(session_id: SessionId, request: Request, service: ServiceDep) -> Decision:
    """Report the chunk just downloaded; get the level of the next one."""
    try:
        report = parse_body(await request.body(), ChunkReport, service.settings.max_body_bytes)
    except BodyError:
        service.metrics.errors.labels("invalid_report").inc()
        raise
    try:
        return await service.decide(session_id, report, api="v1")
    except ReportError as err:
        raise HTTPException(UNPROCESSABLE, detail=report_error_detail(service, err)) from None


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(404))
async def end_session(session_id: SessionId, service: ServiceDep) -> None:
    """Forget a session's history (a player that stops early)."""
    if not service.store.drop(session_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no session {session_id!r}")
