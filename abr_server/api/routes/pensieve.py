"""``POST /``: the API of the Pensieve modified dash.js client (plain-text level, ``REFRESH`` at the end)."""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse
from pydantic import ValidationError

from abr_server.deps import UNPROCESSABLE, ServiceDep
from abr_server.schemas import PensieveReport
from abr_server.sessions import ReportError

router = APIRouter(tags=["pensieve"])
#: The client sends no session id: one may be given in this header, else the client address is used.
SESSION_HEADER = "x-session-id"


@router.post("/", response_class=PlainTextResponse)
async def pensieve(request: Request, service: ServiceDep) -> PlainTextResponse:
    """Decide like Pensieve's server: the body is the client's JSON report, the reply the level index."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HTTPException(UNPROCESSABLE, detail=f"body is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise HTTPException(UNPROCESSABLE, detail="body must be a JSON object")
    if "pastThroughput" in body:  # the client's end-of-stream summary: nothing to decide
        return PlainTextResponse("0")
    try:
        report = PensieveReport.model_validate(body).to_report()
    except ValidationError as err:
        service.metrics.errors.labels("invalid_report").inc()
        detail = [{"loc": ["body", *map(str, e["loc"])], "msg": e["msg"]} for e in err.errors()]
        raise HTTPException(UNPROCESSABLE, detail=detail) from None
    client = request.client.host if request.client else "unknown"
    session_id = request.headers.get(SESSION_HEADER, f"pensieve:{client}")[:128]
    try:
        decision = await service.decide(session_id, report, api="pensieve")
    except ReportError as err:
        service.metrics.errors.labels("invalid_report").inc()
        raise HTTPException(UNPROCESSABLE, detail=str(err)) from None
    return PlainTextResponse("REFRESH" if decision.end_of_video else str(decision.quality))
