"""CORS: player endpoints open to any page by default (no credentials), admin routes never."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from abr_server.main import create_app
from abr_server.settings import Settings
from tests.test_server import TOKEN, report

PAGE = "http://127.0.0.1:8080"


def _client(**settings: object) -> TestClient:
    return TestClient(create_app(Settings(telemetry_db=None, admin_token=TOKEN, **settings)))  # type: ignore[arg-type]


def _preflight(client: TestClient, url: str, headers: str = "content-type", origin: str = PAGE) -> object:
    return client.options(url, headers={"origin": origin, "access-control-request-method": "POST",
                                        "access-control-request-headers": headers})  # fmt: skip


@pytest.mark.parametrize("url", ["/v1/sessions/p/decision", "/"])
def test_by_default_any_page_may_call_the_player_endpoints(url: str) -> None:
    with _client() as client:
        preflight = _preflight(client, url, "content-type,x-session-id")
        assert preflight.status_code == 200  # type: ignore[attr-defined]
        assert preflight.headers["access-control-allow-origin"] == "*"  # type: ignore[attr-defined]
        body = report() if url != "/" else {"lastquality": 1, "buffer": 3.0, "lastRequest": 1,
                                            "lastChunkStartTime": 0.0, "lastChunkFinishTime": 900.0,
                                            "lastChunkSize": 500_000}  # fmt: skip
        reply = client.post(url, json=body, headers={"origin": PAGE})
        assert reply.status_code == 200, reply.text
        assert reply.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in reply.headers


def test_admin_routes_never_answer_cross_origin() -> None:
    with _client() as client:
        preflight = _preflight(client, "/admin/models/v1/activate", "authorization")
        assert "access-control-allow-origin" not in preflight.headers  # type: ignore[attr-defined]
        reply = client.get("/admin/models", headers={"origin": PAGE, "authorization": f"Bearer {TOKEN}"})
        assert reply.status_code == 200
        assert "access-control-allow-origin" not in reply.headers
        # nor does any other route let a page send credentials
        other = _preflight(client, "/v1/sessions/p/decision", "authorization")
        assert other.status_code == 400  # type: ignore[attr-defined]


def test_listed_origins_only() -> None:
    with _client(cors_origins="https://player.example, http://127.0.0.1:8080/") as client:
        assert _preflight(client, "/").headers["access-control-allow-origin"] == PAGE  # type: ignore[attr-defined]
        refused = _preflight(client, "/", origin="https://evil.example")
        assert "access-control-allow-origin" not in refused.headers  # type: ignore[attr-defined]


@pytest.mark.parametrize(("text", "origins"), [
    ("*", ["*"]), ("", []), ("https://a.example,http://b:8080", ["https://a.example", "http://b:8080"]),
    ('["https://a.example/"]', ["https://a.example"]), (" https://a.example ", ["https://a.example"]),
])  # fmt: skip
def test_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch, text: str, origins: list[str]) -> None:
    monkeypatch.setenv("ABR_CORS_ORIGINS", text)
    assert Settings().cors_origins == origins  # type: ignore[call-arg]


@pytest.mark.parametrize("text", ["ftp://a.example", "https://a.example/path", "a.example", "[nope"])
def test_a_bad_origin_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("ABR_CORS_ORIGINS", text)
    with pytest.raises(ValidationError, match="cors_origins"):
        Settings()  # type: ignore[call-arg]


def test_no_cors_when_turned_off() -> None:
    with _client(cors_origins="") as client:
        reply = client.post("/v1/sessions/p/decision", json=report(), headers={"origin": PAGE})
        assert reply.status_code == 200
        assert "access-control-allow-origin" not in reply.headers
