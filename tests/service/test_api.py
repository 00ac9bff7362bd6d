"""REST and signalling against one real app (module-scoped: start-up embeds the avatar once)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
from aiortc import RTCPeerConnection
from PIL import Image

from tests.conftest import data_path
from tests.service.conftest import LiveServer, make_settings, run_server
from tests.service.test_images import encode, png_bomb

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api() -> AsyncIterator[LiveServer]:
    async for live in run_server(make_settings(max_sessions=3, max_upload_bytes=2_000_000)):
        yield live


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def no_leftover_sessions(api: LiveServer) -> AsyncIterator[None]:
    yield
    for session in api.registry:
        await api.registry.end(session.id, "test cleanup")


def no_face_photo() -> bytes:
    """A landscape-like picture: sky gradient, ground, a house; no face anywhere."""
    h, w = 360, 480
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, :, 2] = np.linspace(255, 120, h)[:, None]
    rgb[:, :, 1] = np.linspace(200, 90, h)[:, None]
    rgb[240:] = (60, 120, 40)
    rgb[170:260, 300:420] = (150, 60, 50)
    return encode(Image.fromarray(rgb), "JPEG")


def auth(session: dict[str, object]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['token']}"}


async def test_health_docs_and_avatars(api: LiveServer) -> None:
    await api.healthy()
    docs = await api.http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = (await api.http.get("/openapi.json")).json()["paths"]
    assert {"/v1/sessions", "/v1/sessions/{session_id}", "/v1/sessions/{session_id}/offer"} <= set(
        paths
    )
    listing = paths["/v1/sessions"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"include_ended", "limit"}
    assert "token" in listing["description"]  # says what it never shows
    avatars = (await api.http.get("/v1/avatars")).json()
    assert [a["name"] for a in avatars] == ["astronaut"]
    assert "public domain" in avatars[0]["licence"].lower()
    image = await api.http.get(avatars[0]["image"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert (await api.http.get("/v1/avatars/nobody/image")).status_code == 404
    page = await api.http.get("/")
    assert page.status_code == 200 and '<script type="module" src="app.js">' in page.text


async def test_session_lifecycle(api: LiveServer) -> None:
    created = await api.http.post("/v1/sessions", data={"avatar": "astronaut", "fps": "20"})
    assert created.status_code == 201, created.text
    session = created.json()
    sid = session["id"]
    assert created.headers["location"] == session["links"]["session"] == f"/v1/sessions/{sid}"
    assert session["links"]["offer"] == f"/v1/sessions/{sid}/offer"
    assert session["status"] == "created" and len(session["token"]) >= 24
    assert session["options"] == {"size": 256, "fps": 20, "mode": "avatar", "avatar": "astronaut"}
    assert session["ice_servers"] == []

    url = session["links"]["session"]
    assert (await api.http.get(url)).status_code == 401
    assert (await api.http.get(url, headers={"Authorization": "Bearer nope"})).status_code == 401
    # Never in the URL (access logs keep query strings): a right token as ?token= is refused.
    assert (await api.http.get(url, params={"token": session["token"]})).status_code == 401
    state = (await api.http.get(url, headers=auth(session))).json()
    assert state["status"] == "created" and "token" not in state
    assert set(state["stats"]) >= {"fps_in", "fps_out", "dropped", "latency", "face_present"}
    assert (
        await api.http.get("/v1/sessions/" + "0" * 32, headers=auth(session))
    ).status_code == 404

    metrics = (await api.http.get("/metrics")).text
    assert "reenact_active_sessions 1.0" in metrics
    assert (await api.http.delete(url, headers=auth(session))).status_code == 204
    # Ended sessions stay readable, to their own token, for ended_keep_s: status and reason.
    ended = await api.http.get(url, headers=auth(session))
    assert ended.status_code == 200
    assert (ended.json()["status"], ended.json()["ended_reason"]) == ("ended", "deleted")
    assert (await api.http.get(url)).status_code == 401
    again = await api.http.delete(url, headers=auth(session))
    assert again.status_code == 410 and "has ended (deleted)" in again.json()["detail"]
    metrics = (await api.http.get("/metrics")).text
    assert "reenact_active_sessions 0.0" in metrics
    assert 'reenact_sessions_ended_total{reason="deleted"} 1.0' in metrics
    for name in ("frames_in_total", "frames_out_total", "stage_latency_seconds"):
        assert f"reenact_{name}" in metrics


async def test_dev_mode_lists_every_session(api: LiveServer) -> None:
    """No API keys: no key is asked for, and the listing holds every session (earlier tests'
    ended ones too, with include_ended)."""
    older, newer = await api.create_session(), await api.create_session(mode="keypoints")
    listed = await api.http.get("/v1/sessions")
    assert listed.status_code == 200, listed.text
    assert [s["id"] for s in listed.json()["sessions"]] == [newer["id"], older["id"]]
    assert listed.json()["sessions"][0]["options"]["mode"] == "keypoints"
    assert "ice_servers" not in listed.json()["sessions"][0]
    assert older["token"] not in listed.text and newer["token"] not in listed.text

    deleted = await api.http.delete(older["links"]["session"], headers=auth(older))
    assert deleted.status_code == 204
    live = (await api.http.get("/v1/sessions")).json()["sessions"]
    assert [s["id"] for s in live] == [newer["id"]]
    everything = await api.http.get("/v1/sessions", params={"include_ended": "true"})
    sessions = everything.json()["sessions"]
    assert sessions[0]["id"] == newer["id"]  # live first, then the most recently ended
    assert (sessions[1]["id"], sessions[1]["status"], sessions[1]["ended_reason"]) == (
        older["id"],
        "ended",
        "deleted",
    )
    assert all(s["status"] in ("ended", "failed") for s in sessions[1:])
    assert (await api.http.get("/v1/sessions", params={"limit": 0})).status_code == 422


async def test_uploaded_portrait_makes_a_session(api: LiveServer) -> None:
    photo = data_path("source", "az_family3_man1.jpg").read_bytes()
    response = await api.http.post(
        "/v1/sessions", files={"photo": ("me.jpg", photo, "image/jpeg")}, data={"fps": "15"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["options"]["avatar"] is None
    assert len(api.registry) == 1


BAD_UPLOADS = {
    "no face": (no_face_photo, 422, "no face"),
    "not an image": (lambda: b"<html>hello</html>" * 50, 415, "not a supported image"),
    "gif": (lambda: encode(Image.new("RGB", (64, 64)), "GIF"), 415, "not a supported image"),
    "too many bytes": (lambda: b"\xff\xd8\xff" + b"\0" * 2_000_100, 413, "limit"),
    "far too many bytes": (lambda: b"\xff\xd8\xff" + b"\0" * 5_000_000, 413, "limit"),
    "decompression bomb": (lambda: png_bomb(6000, 6000), 413, "pixels"),
    "truncated": (
        lambda: data_path("source", "az_detection1.jpg").read_bytes()[:5000],
        400,
        "corrupt",
    ),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
async def test_bad_uploads_are_refused_and_the_server_stays_healthy(
    api: LiveServer, case: str
) -> None:
    make, status, words = BAD_UPLOADS[case]
    response = await api.http.post(
        "/v1/sessions", files={"photo": ("upload.bin", make(), "application/octet-stream")}
    )
    assert response.status_code == status, response.text
    assert words in response.json()["detail"].lower()
    assert len(api.registry) == 0  # nothing half-created is left behind
    await api.healthy()
    await api.create_session()  # and it still creates sessions


@pytest.mark.parametrize(
    ("form", "status", "words"),
    [
        ({"avatar": "nobody"}, 400, "unknown avatar"),
        ({"size": "512"}, 400, "not served"),
        ({"size": "300"}, 422, "256 or 512"),
        ({"fps": "0"}, 422, "greater than"),
        ({"mode": "keypoints", "avatar": "astronaut"}, 400, "no photo or avatar"),
        ({"mode": "telepathy"}, 422, "avatar"),
    ],
)
async def test_bad_options(api: LiveServer, form: dict[str, str], status: int, words: str) -> None:
    response = await api.http.post("/v1/sessions", data=form)
    assert response.status_code == status, response.text
    assert words in response.text.lower()
    await api.healthy()


async def test_keypoints_mode_needs_no_portrait(api: LiveServer) -> None:
    session = await api.create_session(mode="keypoints")
    assert session["options"]["mode"] == "keypoints" and session["options"]["avatar"] is None
    assert session["stats"]["keypoints"] is None  # no frame encoded yet
    assert len(api.registry) == 1


async def test_photo_and_avatar_together_is_ambiguous(api: LiveServer) -> None:
    photo = data_path("source", "fomm_11.jpg").read_bytes()
    response = await api.http.post(
        "/v1/sessions", data={"avatar": "astronaut"}, files={"photo": ("a.jpg", photo)}
    )
    assert response.status_code == 400 and "not both" in response.json()["detail"]


async def real_offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_signalling_errors_then_a_good_offer(api: LiveServer) -> None:
    session = await api.create_session()
    offer_url = session["links"]["offer"]
    sdp = {**auth(session), "Content-Type": "application/sdp"}
    as_json = {**auth(session), "Content-Type": "application/json"}
    cases = [
        (dict(content=b"hello", headers=sdp), 400),
        (dict(content=b"v=0\r\nm=video abc\r\n", headers=sdp), 400),
        (dict(content=b"\xff\xfe\x00garbage", headers=sdp), 400),
        (dict(content=b"v=0\r\nm=audio 9 RTP/AVP 0\r\n", headers=sdp), 400),
        (dict(content=b"{not json", headers=as_json), 400),
        (dict(json={"type": "answer", "sdp": "v=0"}, headers=auth(session)), 400),
        (dict(content=b"v=0", headers={**auth(session), "Content-Type": "text/plain"}), 415),
        (dict(content=b"v=0\r\n" + b"a=x\r\n" * 20_000, headers=sdp), 413),
    ]
    for kwargs, status in cases:
        response = await api.http.post(offer_url, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, (kwargs, response.text)
        await api.healthy()
    unknown = await api.http.post(
        "/v1/sessions/" + "f" * 32 + "/offer", content=b"v=0", headers=sdp
    )
    assert unknown.status_code == 404

    # The session survived all of that: a real offer is answered, JSON in, JSON out.
    pc, offer = await real_offer()
    try:
        response = await api.http.post(
            offer_url, json={"type": "offer", "sdp": offer}, headers=auth(session)
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["type"] == "answer" and "m=video" in answer["sdp"]
        assert "a=candidate:" in answer["sdp"] and "127.0.0.1" in answer["sdp"]  # non-trickle
        again = await api.http.post(offer_url, content=offer.encode(), headers=sdp)
        assert again.status_code == 409
    finally:
        await pc.close()


async def test_whip_style_offer_gets_201_and_location(api: LiveServer) -> None:
    session = await api.create_session()
    pc, offer = await real_offer()
    try:
        response = await api.http.post(
            session["links"]["offer"],
            content=offer.encode(),
            headers={**auth(session), "Content-Type": "application/sdp"},
        )
        assert response.status_code == 201, response.text
        assert response.headers["content-type"].startswith("application/sdp")
        assert response.headers["location"] == session["links"]["session"]
        assert response.text.startswith("v=0") and "m=video" in response.text
        assert (
            await api.http.delete(response.headers["location"], headers=auth(session))
        ).status_code == 204
    finally:
        await pc.close()


async def test_max_sessions_answers_503_with_retry_after(api: LiveServer) -> None:
    sessions = [await api.create_session() for _ in range(3)]
    full = await api.http.post("/v1/sessions")
    assert full.status_code == 503
    assert full.headers["retry-after"] == "10"
    assert "full" in full.json()["detail"]
    await api.healthy()
    url = sessions[0]["links"]["session"]
    assert (await api.http.delete(url, headers=auth(sessions[0]))).status_code == 204
    await api.create_session()  # a place came free
    assert "reenact_sessions_rejected_total 1.0" in (await api.http.get("/metrics")).text
