"""The built-in avatars a session can use instead of an uploaded photo."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from service.api.deps import StateDep

router = APIRouter(prefix="/v1/avatars", tags=["avatars"])


class AvatarOut(BaseModel):
    name: str
    title: str
    licence: str
    credit: str
    image: str  # URL of the portrait


@router.get("")
async def list_avatars(state: StateDep, request: Request) -> list[AvatarOut]:
    return [
        AvatarOut(
            name=a.name,
            title=a.title,
            licence=a.licence,
            credit=a.credit,
            image=str(request.url_for("avatar_image", name=a.name).path),
        )
        for a in state.catalog
    ]


@router.get("/{name}/image", name="avatar_image", response_class=FileResponse)
async def avatar_image(name: str, state: StateDep) -> FileResponse:
    """The portrait itself (JPEG), e.g. for a picker."""
    if name not in state.catalog:
        raise HTTPException(404, f"no built-in avatar {name!r}")
    return FileResponse(state.catalog.get(name).path)
