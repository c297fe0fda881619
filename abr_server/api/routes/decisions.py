"""The v1 decision API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status

from abr_server.deps import UNPROCESSABLE, ServiceDep
from abr_server.schemas import ChunkReport, Decision
from abr_server.sessions import ReportError

router = APIRouter(prefix="/v1", tags=["decisions"])

SessionId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


@router.post("/sessions/{session_id}/decision", response_model=Decision)
async def decision(session_id: SessionId, report: ChunkReport, service: ServiceDep) -> Decision:
    """Report the chunk just downloaded; get the level of the next one."""
    try:
        return await service.decide(session_id, report, api="v1")
    except ReportError as err:
        service.metrics.errors.labels("invalid_report").inc()
        raise HTTPException(UNPROCESSABLE,
                            detail=[{"loc": ["body", err.field_name], "msg": str(err)}]) from None  # fmt: skip


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def end_session(session_id: SessionId, service: ServiceDep) -> None:
    """Forget a session's history (a player that stops early)."""
    if not service.store.drop(session_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no session {session_id!r}")
