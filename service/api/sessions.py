"""Sessions: create (source embedding computed here, once), inspect, end; SDP signalling."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from pydantic import BaseModel, BeforeValidator, Field, ValidationError

from models.errors import BadInputError
from models.pipeline import Reenactor
from service.api.deps import SessionDep, StateDep
from service.errors import NotSupportedError, PayloadTooLargeError, UnsupportedMediaError
from service.sessions import Session, SessionOptions
from service.settings import IceServer

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

SDP_TYPE = "application/sdp"


class Links(BaseModel):
    session: str  # GET for stats, DELETE to end
    offer: str  # POST an SDP offer here


class OptionsOut(BaseModel):
    size: int
    fps: int
    mode: str
    avatar: str | None


class SessionOut(BaseModel):
    id: str
    status: str
    options: OptionsOut
    links: Links
    ice_servers: list[IceServer]
    age_s: float
    stats: dict[str, object]


class SessionCreated(SessionOut):
    token: str = Field(description="Bearer token for every other call on this session")


class SdpMessage(BaseModel):
    """An offer or answer as the browser's RTCSessionDescription serialises it."""

    type: Literal["offer", "answer"]
    sdp: str


def _describe(session: Session, request: Request, state: StateDep) -> SessionOut:
    o = session.options
    return SessionOut(
        id=session.id,
        status=session.state,
        options=OptionsOut(size=o.size, fps=o.fps, mode=o.mode, avatar=o.avatar),
        links=Links(
            session=request.url_for("get_session", session_id=session.id).path,
            offer=request.url_for("post_offer", session_id=session.id).path,
        ),
        ice_servers=state.settings.ice_servers,
        age_s=round(session.age_s(), 2),
        stats=session.stats.snapshot(),
    )


@router.post("", status_code=201, response_model=SessionCreated)
async def create_session(
    state: StateDep,
    request: Request,
    response: Response,
    photo: Annotated[
        UploadFile | None, File(description="Source portrait (JPEG, PNG or WebP) with one face")
    ] = None,
    avatar: Annotated[
        str | None, Form(description="Name of a built-in avatar (GET /v1/avatars) instead")
    ] = None,
    size: Annotated[
        Literal[256, 512],
        BeforeValidator(int),  # form fields arrive as text
        Form(description="Output side in pixels"),
    ] = 256,
    fps: Annotated[int, Form(ge=1, le=60, description="Output frame-rate cap")] = 30,
    mode: Annotated[
        Literal["avatar", "keypoints"],
        Form(description="avatar: the server renders video; keypoints: not supported yet"),
    ] = "avatar",
) -> SessionCreated:
    """Create a session; 503 + Retry-After when the server is full."""
    settings = state.settings
    with state.registry.reserve():
        if mode == "keypoints":
            raise NotSupportedError(
                "mode 'keypoints' (sending motion keypoints for the client to render) is not "
                "supported yet; use mode 'avatar'"
            )
        if size not in state.engines:
            raise BadInputError(f"size {size} is not served here (served: {sorted(state.engines)})")
        if photo is not None and avatar is not None:
            raise BadInputError("give either a photo or an avatar name, not both")
        if photo is not None:
            # One byte over the limit is enough for decode_image to refuse it.
            data = await photo.read(settings.max_upload_bytes + 1)
            source = await state.sources.from_upload(data, size)
        else:
            avatar = avatar or settings.default_avatar
            source = await state.sources.builtin(avatar, size)
        # The Reenactor builds its own face tracker: also too slow for the event loop.
        reenactor = await asyncio.to_thread(Reenactor, source, state.engines[size])
        session = state.registry.open(
            SessionOptions(size=size, fps=min(fps, settings.max_fps), mode=mode, avatar=avatar),
            reenactor,
        )
    out = _describe(session, request, state)
    response.headers["Location"] = out.links.session
    return SessionCreated(**out.model_dump(), token=session.token)


@router.get("/{session_id}", name="get_session", response_model=SessionOut)
async def get_session(session: SessionDep, state: StateDep, request: Request) -> SessionOut:
    """State and live stats: fps in/out, dropped frames, stage latencies, face present."""
    return _describe(session, request, state)


@router.delete("/{session_id}", status_code=204)
async def delete_session(session: SessionDep, state: StateDep) -> Response:
    """End the session and free everything it holds."""
    await state.registry.end(session.id, "deleted")
    return Response(status_code=204)


@router.post(
    "/{session_id}/offer",
    name="post_offer",
    responses={
        201: {"content": {SDP_TYPE: {}}, "description": "WHIP-style: SDP answer, Location"},
        200: {"model": SdpMessage, "description": "JSON offer: JSON answer"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                SDP_TYPE: {"schema": {"type": "string"}},
                "application/json": {"schema": SdpMessage.model_json_schema()},
            },
        }
    },
)
async def post_offer(session: SessionDep, state: StateDep, request: Request) -> Response:
    """Send a complete (non-trickle) SDP offer; get the complete answer.

    ``Content-Type: application/sdp`` is answered WHIP-style (201, ``application/sdp``,
    ``Location`` of the session, which DELETE ends); JSON ``{"type": "offer", "sdp": ...}`` is
    answered with JSON ``{"type": "answer", "sdp": ...}``.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _read_limited(request, state.settings.max_sdp_bytes)
    if content_type == SDP_TYPE:
        answer = await session.negotiate(_text(body))
        location = request.url_for("get_session", session_id=session.id).path
        return Response(
            answer, status_code=201, media_type=SDP_TYPE, headers={"Location": location}
        )
    if content_type == "application/json":
        try:
            offer = SdpMessage.model_validate(json.loads(body))
        except (ValueError, ValidationError) as e:
            raise BadInputError(f"expected JSON {{type: 'offer', sdp: ...}}: {e}") from e
        if offer.type != "offer":
            raise BadInputError(f"expected an offer, got {offer.type!r}")
        answer = await session.negotiate(offer.sdp)
        return Response(
            SdpMessage(type="answer", sdp=answer).model_dump_json(),
            media_type="application/json",
        )
    raise UnsupportedMediaError(f"send {SDP_TYPE} or application/json, not {content_type!r}")


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"SDP body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInputError("SDP must be UTF-8 text") from e
