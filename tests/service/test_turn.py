"""TURN REST API credentials, checked against values computed outside this code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from aiortc import RTCPeerConnection

from service.settings import IceServer
from service.turn import turn_credentials, turn_password
from tests.service.conftest import make_settings, run_server

URLS = ["turn:turn.example.org:3478?transport=udp", "turn:turn.example.org:3478?transport=tcp"]


def test_password_is_base64_hmac_sha1_rfc2202_vector() -> None:
    # RFC 2202 test case 2 for HMAC-SHA1.
    expected = bytes.fromhex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
    assert turn_password("Jefe", "what do ya want for nothing?") == base64.b64encode(
        expected
    ).decode("ascii")


def test_credentials_match_an_openssl_computed_vector() -> None:
    # printf '%s' '1700000600:sess-1' | openssl dgst -sha1 -hmac north -binary | base64
    server = turn_credentials("north", URLS, ttl_s=600, label="sess-1", now=1_700_000_000.0)
    assert isinstance(server, IceServer)
    assert server.urls == URLS
    assert server.username == "1700000600:sess-1"
    assert server.credential == "3X8XahCu075kMDHzLwms8nUHDek="


def test_username_is_expiry_colon_label_and_credential_is_hmac_of_it() -> None:
    """coturn's format: usercombo "timestamp:userid", password base64(hmac(secret, combo))."""
    secret = "s3cr3t-ü"  # non-ASCII: both sides hash the UTF-8 bytes
    server = turn_credentials(secret, URLS[:1], ttl_s=90, label="abc123", now=1_000.25)
    assert server.username is not None and server.credential is not None
    expiry, label = server.username.split(":")
    assert (int(expiry), label) == (1_091, "abc123")  # ceil(now) + ttl: never shorter than ttl
    independent = hmac.new(secret.encode("utf-8"), server.username.encode(), hashlib.sha1)
    assert base64.b64decode(server.credential) == independent.digest()


def test_expiry_follows_the_clock_and_ttl() -> None:
    def expiry(now: float, ttl_s: int) -> int:
        username = turn_credentials("k", URLS, ttl_s=ttl_s, label="x", now=now).username
        assert username is not None
        return int(username.split(":")[0])

    assert expiry(1_700_000_000.0, 600) == 1_700_000_600
    assert expiry(1_700_000_000.0, 86_400) == 1_700_086_400
    assert expiry(1_700_000_000.999, 600) == 1_700_000_601
    assert expiry(1_700_000_001.0, 600) - expiry(1_700_000_000.0, 600) == 1


def test_empty_label_gives_the_bare_timestamp() -> None:
    # "If you don't have a suitable id, then the timestamp alone can be used" (coturn).
    server = turn_credentials("north", URLS, ttl_s=600, label="", now=1_700_000_000.0)
    assert server.username == "1700000600"
    assert server.credential == "pL3AD+pdSi0Td8xk/uSD7cXdsYc="  # openssl, as above


def test_different_secrets_or_labels_give_different_credentials() -> None:
    a = turn_credentials("one", URLS, ttl_s=600, label="s", now=0.0)
    b = turn_credentials("two", URLS, ttl_s=600, label="s", now=0.0)
    c = turn_credentials("one", URLS, ttl_s=600, label="t", now=0.0)
    assert a.credential != b.credential and a.credential != c.credential


@pytest.mark.parametrize(
    ("secret", "urls", "ttl_s", "label"),
    [
        ("", URLS, 600, "s"),  # no secret
        ("k", URLS, 0, "s"),  # no lifetime
        ("k", URLS, -5, "s"),
        ("k", URLS, 600, "a:b"),  # the separator would move the expiry
        ("k", [], 600, "s"),
        ("k", ["stun:stun.example.org:3478"], 600, "s"),  # STUN takes no credential
    ],
)
def test_bad_arguments_are_refused(secret: str, urls: list[str], ttl_s: int, label: str) -> None:
    with pytest.raises(ValueError):
        turn_credentials(secret, urls, ttl_s=ttl_s, label=label, now=1_700_000_000.0)


async def test_a_live_session_gets_turn_credentials_and_binds_in_the_port_range() -> None:
    """The settings wired through: the session JSON carries this session's TURN credential,
    and the server's answer offers host candidates inside the configured port range only."""
    secret = "s" * 40
    settings = make_settings(
        turn_secret=secret,
        turn_urls=["turn:turn.example.org:3478?transport=udp"],
        turn_ttl_s=300,
        rtc_port_min=47100,
        rtc_port_max=47119,
    )
    async for live in run_server(settings):
        before = time.time()
        session = await live.create_session()
        turn = session["ice_servers"][-1]
        expiry, label = turn["username"].split(":")
        assert label == session["id"]
        assert before + 300 <= int(expiry) <= time.time() + 301
        expected = hmac.new(secret.encode(), turn["username"].encode(), hashlib.sha1).digest()
        assert turn["credential"] == base64.b64encode(expected).decode()

        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        try:
            response = await live.http.post(
                session["links"]["offer"],
                json={"type": "offer", "sdp": pc.localDescription.sdp},
                headers={"Authorization": f"Bearer {session['token']}"},
            )
            assert response.status_code == 200, response.text
            candidates = [
                line.split() for line in response.json()["sdp"].splitlines()
                if line.startswith("a=candidate:")
            ]  # fmt: skip
            assert candidates
            assert all(47100 <= int(c[5]) <= 47119 for c in candidates), candidates
        finally:
            await pc.close()
