"""Admin: list, activate and roll back model versions (bearer token)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel

from abr_server.deps import AdminDep, ServiceDep
from abr_server.registry import RegistryError, RegistryWriteError, UnknownVersion
from abr_server.schemas import problem_responses

#: Where the admin routes live (never open to cross-origin pages).
ADMIN_PREFIX = "/admin"
router = APIRouter(prefix=ADMIN_PREFIX, tags=["admin"], dependencies=[AdminDep], responses=problem_responses(401, 403))


class ModelsView(BaseModel):
    """Versions in the registry and the one served (None: no version could be, the fallback rule answers)."""

    versions: list[str]
    serving: str | None
    previous: str | None


def _view(service: ServiceDep) -> ModelsView:
    previous = service.slot.previous
    return ModelsView(versions=service.registry.versions(), serving=service.slot.current.version,
                      previous=previous.version if previous else None)  # fmt: skip


@router.get("/models", response_model=ModelsView)
async def models(service: ServiceDep) -> ModelsView:
    """The registry's versions and the one being served."""
    return _view(service)


@router.post("/models/{version}/activate", response_model=ModelsView, responses=problem_responses(404, 409, 503))
async def activate(version: str, service: ServiceDep) -> ModelsView:
    """Serve ``version`` once it validates; 404 if unknown, 409 with one line naming the problem if refused
    (the current model keeps serving)."""
    try:
        await service.activate(version)
    except UnknownVersion as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(err)) from None
    except RegistryWriteError as err:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(err)) from None
    except RegistryError as err:
        service.metrics.errors.labels("model_refused").inc()
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from None
    return _view(service)


@router.post("/models/rollback", response_model=ModelsView, responses=problem_responses(409, 503))
async def rollback(service: ServiceDep) -> ModelsView:
    """Serve the previously served model again."""
    try:
        await service.rollback()
    except RegistryWriteError as err:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(err)) from None
    except RegistryError as err:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from None
    return _view(service)
