"""``GET|POST /v1/cmcd/decision``: a decision from the CMCD a player sends natively (query or headers)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import ValidationError

from abr_common.errors import problems
from abr_server import cmcd
from abr_server.api.routes.decisions import SESSION_ID, report_error_detail
from abr_server.deps import ServiceDep
from abr_server.schemas import UNPROCESSABLE, Decision
from abr_server.sessions import ReportError

router = APIRouter(prefix="/v1", tags=["decisions"])
#: CMCD sessions are kept apart from sessions named in the v1 path.
SESSION_PREFIX = "cmcd:"


def _refuse(service: ServiceDep, message: str) -> HTTPException:
    service.metrics.errors.labels("invalid_report").inc()
    return HTTPException(UNPROCESSABLE, detail=[{"loc": ["cmcd"], "msg": message, "type": "value_error"}])


_NOT_VIDEO: dict[int | str, dict[str, Any]] = {204: {"description": "Not a video segment: nothing to decide."}}


@router.get("/cmcd/decision", response_model=Decision, responses=_NOT_VIDEO, operation_id="cmcd_decision_get")
@router.post("/cmcd/decision", response_model=Decision, responses=_NOT_VIDEO, operation_id="cmcd_decision_post")
async def cmcd_decision(request: Request, service: ServiceDep) -> Decision | Response:
    """The level of the next chunk, from the CMCD of a segment request (``CMCD`` query argument or headers).

    Needs ``sid`` (the session), ``br`` (the requested bitrate, kbit/s), ``bl`` (buffer, ms) and ``mtp``
    (measured throughput, kbit/s); ``cid`` picks a video served by that name. The chunk index is counted
    per session from 0; the level is the ladder rung nearest ``br``.
    """
    try:
        data = cmcd.collect(request.query_params, request.headers)
    except cmcd.CmcdError as err:
        raise _refuse(service, str(err)) from None
    if not cmcd.is_video(data):
        return Response(status_code=204)
    sid = data.get("sid")
    if not isinstance(sid, str) or not re.fullmatch(SESSION_ID, sid):
        raise _refuse(service, 'CMCD: needs sid, a string of 1-128 letters, digits or "._:-"')
    cid = data.get("cid")
    name = cid if isinstance(cid, str) and cid in service.catalogue.videos else None
    key = SESSION_PREFIX + sid
    try:
        video_name, video = service.catalogue.get(name)
        session = service.store.peek(key)
        index = 0 if session is None else session.last_index + 1
        report = cmcd.to_report(data, index, video, video_name if name is not None else None)
        return await service.decide(key, report, api="cmcd")
    except cmcd.CmcdError as err:
        raise _refuse(service, str(err)) from None
    except ValidationError as err:
        raise _refuse(service, f"CMCD: {problems(err)}") from None
    except ReportError as err:
        raise HTTPException(UNPROCESSABLE, detail=report_error_detail(service, err)) from None
