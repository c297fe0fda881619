"""Route dependencies as ``Annotated`` aliases."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from abr_server.service import DecisionService
from abr_server.settings import Settings

_bearer = HTTPBearer(auto_error=False)


async def get_service(request: Request) -> DecisionService:
    """The app's decision service (built in the lifespan; ``async`` so FastAPI calls it inline, not on a thread)."""
    service: DecisionService = request.app.state.service
    return service


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


ServiceDep = Annotated[DecisionService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def require_admin(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Admin routes need ``Authorization: Bearer <ABR_ADMIN_TOKEN>``; without a configured token they are off."""
    if settings.admin_token is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="admin routes are disabled (set ABR_ADMIN_TOKEN)")
    expected = settings.admin_token.get_secret_value()
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


AdminDep = Depends(require_admin)
