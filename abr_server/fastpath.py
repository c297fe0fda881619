"""The decision endpoint without the framework's per-request machinery.

``POST /v1/sessions/{id}/decision`` is the request a server in front of thousands of players answers
all day. Going through FastAPI costs about as much CPU as the decision itself (route matching,
dependency solving, query-string parsing, response-model re-validation, per-request telemetry
checks), so this ASGI middleware answers it directly: the body is parsed and validated by
`abr_server.bodies.parse_body`, as on the FastAPI route, and the reply is the same `Decision` model
serialised by pydantic.
The FastAPI route stays: it publishes the API in OpenAPI and answers whenever the fast path is off
(``ABR_FAST_PATH=false``); tests check that both give the same answers, errors included.

It sits inside the body-size limit and CORS middleware, so both still apply. Requests it does not
recognise (other paths, other methods, a malformed session id) go on to FastAPI.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from abr_server.api.routes.decisions import SESSION_ID, report_error_detail
from abr_server.bodies import BodyError, parse_body
from abr_server.schemas import UNPROCESSABLE, ChunkReport
from abr_server.service import DecisionService
from abr_server.sessions import ReportError

_PATH = re.compile(rf"/v1/sessions/({SESSION_ID})/decision")
_JSON_HEADERS = [(b"content-type", b"application/json")]


class DecisionFastPath:
    """ASGI middleware answering the v1 decision endpoint itself; everything else passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PATH.fullmatch(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        service: DecisionService | None = getattr(scope["app"].state, "service", None) if match else None
        if match is None or service is None:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            report = parse_body(bytes(body), ChunkReport, service.settings.max_body_bytes)
        except BodyError as err:
            service.metrics.errors.labels("invalid_report").inc()
            await reply_json(send, err.status_code, _dump({"detail": err.detail}))
            return
        try:
            decision = await service.decide(match.group(1), report, api="v1")
        except ReportError as err:
            await reply_json(send, UNPROCESSABLE, _dump({"detail": report_error_detail(service, err)}))
            return
        await reply_json(send, 200, decision.model_dump_json().encode())


def _dump(content: object) -> bytes:
    return json.dumps(content, separators=(",", ":")).encode()


async def reply_json(send: Send, status: int, body: bytes) -> None:
    """Send a complete JSON response (``body`` already encoded)."""
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
