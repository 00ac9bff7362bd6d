"""Sessions: create (source embedding computed here, once), list, inspect, end; SDP signalling."""

from __future__ import annotations

import json
import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from pydantic import BaseModel, BeforeValidator, Field, ValidationError

from models.errors import BadInputError
from service.api.deps import ApiKeyDep, GuardDep, SessionRefDep, StateDep
from service.errors import PayloadTooLargeError, UnsupportedMediaError
from service.hosting import SessionRequest, SessionView
from service.settings import IceServer
from service.turn import session_ice_servers

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

SDP_TYPE = "application/sdp"
# GET /v1/sessions: a key holds at most max_sessions_per_key live sessions, but with no cap (or
# in dev mode) and its recently ended ones it could be hundreds; a page is bounded.
LIST_DEFAULT = 100
LIST_MAX = 500


class Links(BaseModel):
    session: str  # GET for stats, DELETE to end
    offer: str  # POST an SDP offer here


class OptionsOut(BaseModel):
    size: int
    fps: int
    mode: str
    avatar: str | None


class SessionSummary(BaseModel):
    """A session as a listing shows it: everything but its ICE servers (and never its token)."""

    id: str
    status: str = Field(description="created, connecting, live; then ended, or failed")
    options: OptionsOut
    links: Links
    age_s: float = Field(description="Seconds since it was created; once ended, how long it lived")
    stats: dict[str, object]
    ended_reason: str | None = Field(
        default=None, description="Why it ended, once status is 'ended' or 'failed'"
    )


class SessionOut(SessionSummary):
    ice_servers: list[IceServer] = Field(
        description="STUN/TURN servers for this session's RTCPeerConnection (TURN credentials "
        "are minted per session and short-lived)"
    )


class SessionList(BaseModel):
    sessions: list[SessionSummary] = Field(
        description="Live sessions first, newest first; then, with include_ended, the ended "
        "ones, most recently ended first"
    )
    truncated: bool = Field(description="More sessions matched than `limit`: the oldest are cut")
    partial: bool = Field(
        description="Some cluster workers did not answer in time: their sessions are missing "
        "from this answer (ask again)"
    )


class SessionCreated(SessionOut):
    token: str = Field(description="Bearer token for every other call on this session")
    token_expires_in_s: float = Field(
        description="The token (and the session) last at most this long; afterwards the token "
        "only reads how the session ended, for a while"
    )


class SdpMessage(BaseModel):
    """An offer or answer as the browser's RTCSessionDescription serialises it."""

    type: Literal["offer", "answer"]
    sdp: str


def _summary(view: SessionView, request: Request) -> SessionSummary:
    o = view.options
    return SessionSummary(
        id=view.id,
        status=view.status,
        options=OptionsOut(size=o.size, fps=o.fps, mode=o.mode, avatar=o.avatar),
        links=Links(
            session=request.url_for("get_session", session_id=view.id).path,
            offer=request.url_for("post_offer", session_id=view.id).path,
        ),
        age_s=view.age_s,
        stats=view.stats,
        ended_reason=view.ended_reason,
    )


def _describe(view: SessionView, request: Request, state: StateDep) -> SessionOut:
    return SessionOut(
        **_summary(view, request).model_dump(),
        ice_servers=session_ice_servers(state.settings, view.id, time.time()),
    )


def _listing_order(view: SessionView) -> tuple[bool, float, str]:
    """Live before ended (a cut by ``limit`` drops old records, never a live session); newest
    first in each: live by age, ended by how long ago they ended."""
    if view.ended_s_ago is None:
        return False, view.age_s, view.id
    return True, view.ended_s_ago, view.id


@router.post("", status_code=201, response_model=SessionCreated)
async def create_session(
    state: StateDep,
    guard: GuardDep,
    owner: ApiKeyDep,
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
        Literal["avatar", "keypoints", "keypoints-device"],
        Form(
            description="avatar: the server animates a portrait with your face; keypoints: it "
            "sends back your own face rebuilt from its keypoint stream (no photo or avatar), "
            "and the stats show that stream's bitrate; keypoints-device: the same, but the "
            "client tracks and encodes the keypoints itself and sends no video, only the "
            "codec's messages on data channels 'keypoints-motion' (unordered, no "
            "retransmissions) and 'keypoints-control' (reliable); the offer's video section is "
            "recvonly"
        ),
    ] = "avatar",
) -> SessionCreated:
    """Create a session with an API key (none in local/dev mode).

    503 + Retry-After when the server is full; 429 + Retry-After when this key is over its
    request rate or already has ``max_sessions_per_key`` sessions.
    """
    data = None
    if photo is not None:
        # One byte over the limit is enough for decode_image to refuse it.
        data = await photo.read(state.settings.max_upload_bytes + 1)
    live = 0
    if owner is not None and guard.quota.per_key is not None:
        live = (await state.host.load()).by_owner.get(owner, 0)
    with guard.quota.hold(owner, live):
        view, token = await state.host.create(
            SessionRequest(size=size, fps=fps, mode=mode, avatar=avatar, photo=data, owner=owner)
        )
    out = _describe(view, request, state)
    response.headers["Location"] = out.links.session
    return SessionCreated(
        **out.model_dump(), token=token, token_expires_in_s=state.settings.max_session_s
    )


@router.get("", name="list_sessions", response_model=SessionList)
async def list_sessions(
    state: StateDep,
    owner: ApiKeyDep,
    request: Request,
    include_ended: Annotated[
        bool,
        Query(
            description="Also list the sessions that ended (status ended or failed) and are "
            "still kept to say how, for ended_keep_s"
        ),
    ] = False,
    limit: Annotated[
        int, Query(ge=1, le=LIST_MAX, description="At most this many sessions in the answer")
    ] = LIST_DEFAULT,
) -> SessionList:
    """The sessions this API key created: by default the live ones (created, connecting, live),
    which are what ``max_sessions_per_key`` counts; in local/dev mode (no keys) every session.

    Each item is what ``GET /v1/sessions/{id}`` shows (status, options, links, age, stats, end
    reason) without ``ice_servers``, and never a session's token: a session is joined with the
    token ``POST /v1/sessions`` returned, and a listing mints no TURN credentials.  Counts
    against the key's request rate like any call with a key.
    """
    listing = await state.host.sessions(owner, include_ended)
    views = sorted(listing.views, key=_listing_order)
    return SessionList(
        sessions=[_summary(view, request) for view in views[:limit]],
        truncated=len(views) > limit,
        partial=bool(listing.unanswered),
    )


@router.get("/{session_id}", name="get_session", response_model=SessionOut)
async def get_session(ref: SessionRefDep, state: StateDep, request: Request) -> SessionOut:
    """State and live stats: fps in/out, dropped frames, stage latencies, face present.

    An ended session stays readable for ``ended_keep_s``: status ``ended`` or ``failed`` (the
    server's fault) and ``ended_reason``.
    """
    return _describe(await state.host.view(ref.id, ref.token), request, state)


@router.delete("/{session_id}", status_code=204)
async def delete_session(ref: SessionRefDep, state: StateDep) -> Response:
    """End the session and free everything it holds."""
    await state.host.end(ref.id, ref.token, "deleted")
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
async def post_offer(ref: SessionRefDep, state: StateDep, request: Request) -> Response:
    """Send a complete (non-trickle) SDP offer; get the complete answer.

    ``Content-Type: application/sdp`` is answered WHIP-style (201, ``application/sdp``,
    ``Location`` of the session, which DELETE ends); JSON ``{"type": "offer", "sdp": ...}`` is
    answered with JSON ``{"type": "answer", "sdp": ...}``.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _read_limited(request, state.settings.max_sdp_bytes)
    if content_type == SDP_TYPE:
        answer = await state.host.negotiate(ref.id, ref.token, _text(body))
        location = request.url_for("get_session", session_id=ref.id).path
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
        answer = await state.host.negotiate(ref.id, ref.token, offer.sdp)
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
