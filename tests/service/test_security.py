"""Access and limits against a real app with API keys: keys, token scope, per-key quotas,
rate limits, failed attempts per address, body caps, CORS, and the refusal to serve keyless on
a public address."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from service.api.auth import Guard
from service.api.limits import RateLimiter
from service.app import create_app
from service.cli import main
from service.errors import ConfigurationError, TooManyRequestsError
from tests.service.conftest import LiveServer, make_settings, run_server, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEYS = {
    name: f"{name}-secret-0123456789abcdef"
    for name in ("alpha", "beta", "gamma", "burst", "delta", "epsilon")
}
ORIGIN = "https://app.example"
LIMIT = 100_000 + 64 * 1024  # max_upload_bytes + the form's overhead: the cap on any body


def key(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def token(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['token']}"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def keyed() -> AsyncIterator[LiveServer]:
    settings = make_settings(
        api_keys=KEYS,
        max_sessions=4,
        max_sessions_per_key=2,
        rate_limit_per_minute=6,  # one request per 10 s once a key's burst is spent
        rate_limit_burst=10,
        retry_after_s=7,
        max_upload_bytes=100_000,
        cors_origins=[ORIGIN],
        auth_failures_per_minute=100,  # its tests fail on purpose; that limit has its own server
    )
    async for live in run_server(settings):
        yield live


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def no_leftover_sessions(keyed: LiveServer) -> AsyncIterator[None]:
    yield
    for session in keyed.registry:
        await keyed.registry.end(session.id, "test cleanup")


async def create(server: LiveServer, name: str) -> dict[str, Any]:
    response = await server.http.post("/v1/sessions", headers=key(name))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_api_keys_are_required_where_resources_are_spent(keyed: LiveServer) -> None:
    # Rate budget: alpha spends 3 requests here.
    missing = await keyed.http.post("/v1/sessions")
    assert missing.status_code == 401
    assert missing.json()["error"] == "unauthorized" and "API key" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await keyed.http.post("/v1/sessions", headers={"X-API-Key": "x" * 30})
    assert (wrong.status_code, wrong.json()["detail"]) == (401, "unknown API key")
    assert len(keyed.registry) == 0

    by_bearer = await create(keyed, "alpha")
    by_header = await keyed.http.post("/v1/sessions", headers={"X-API-Key": KEYS["alpha"]})
    assert by_header.status_code == 201, by_header.text
    # The key id owns the session (its quota counts it); the client never sees the secret.
    assert keyed.registry.get(by_bearer["id"]).owner == "alpha"
    assert KEYS["alpha"] not in by_header.text

    assert (await keyed.http.get("/metrics")).status_code == 401
    assert (await keyed.http.get("/metrics", headers=key("alpha"))).status_code == 200
    # Open: liveness probes, the public-domain avatar catalogue (an <img> sends no header).
    await keyed.healthy()
    avatars = await keyed.http.get("/v1/avatars")
    assert avatars.status_code == 200
    assert (await keyed.http.get(avatars.json()[0]["image"])).status_code == 200


async def test_session_tokens_only_open_their_own_session(keyed: LiveServer) -> None:
    # alpha 1, beta 1.
    mine, theirs = await create(keyed, "alpha"), await create(keyed, "beta")
    assert mine["token_expires_in_s"] == 3600.0
    assert (await keyed.http.get(mine["links"]["session"], headers=token(mine))).status_code == 200
    url = theirs["links"]["session"]
    assert (await keyed.http.get(url, headers=token(mine))).status_code == 401
    assert (await keyed.http.delete(url, headers=token(mine))).status_code == 401
    offer = await keyed.http.post(
        theirs["links"]["offer"],
        content=b"v=0",
        headers={**token(mine), "Content-Type": "application/sdp"},
    )
    assert offer.status_code == 401
    # An API key is not a session token, not even for its own sessions.
    own_by_key = await keyed.http.get(mine["links"]["session"], headers=key("alpha"))
    assert own_by_key.status_code == 401
    assert len(keyed.registry) == 2


async def test_sessions_per_key_and_in_total(keyed: LiveServer) -> None:
    # alpha 4, beta 2, gamma 1.
    first = await create(keyed, "alpha")
    await create(keyed, "alpha")
    over = await keyed.http.post("/v1/sessions", headers=key("alpha"))
    assert over.status_code == 429, over.text
    assert over.json()["error"] == "too_many_requests" and "alpha" in over.json()["detail"]
    assert over.headers["retry-after"] == "7"
    # Other keys are not affected by alpha's quota...
    await create(keyed, "beta")
    await create(keyed, "beta")
    # ... but the server as a whole is full now (max_sessions=4).
    full = await keyed.http.post("/v1/sessions", headers=key("gamma"))
    assert full.status_code == 503 and full.json()["error"] == "server_full"
    assert full.headers["retry-after"] == "7"
    deleted = await keyed.http.delete(first["links"]["session"], headers=token(first))
    assert deleted.status_code == 204
    await create(keyed, "alpha")  # a place of alpha's came free
    assert len(keyed.registry) == 4


async def test_a_key_lists_its_own_sessions_and_nothing_else(keyed: LiveServer) -> None:
    # delta 6 requests, epsilon 3.  Earlier tests' sessions (other keys') are ended records by now.
    first = await create(keyed, "delta")
    deleted = await keyed.http.delete(first["links"]["session"], headers=token(first))
    assert deleted.status_code == 204
    older, newer = await create(keyed, "delta"), await create(keyed, "delta")
    theirs = await create(keyed, "epsilon")

    listed = await keyed.http.get("/v1/sessions", headers=key("delta"))
    assert listed.status_code == 200, listed.text
    body = listed.json()
    # Only the key's live sessions by default, newest first, no token and no ICE servers.
    assert [s["id"] for s in body["sessions"]] == [newer["id"], older["id"]]
    assert (body["truncated"], body["partial"]) == (False, False)
    item = body["sessions"][0]
    assert set(item) == {"id", "status", "options", "links", "age_s", "stats", "ended_reason"}
    assert (item["status"], item["links"], item["options"]) == (
        "created",
        newer["links"],
        newer["options"],
    )
    every = [first, older, newer, theirs]
    assert not any(s["token"] in listed.text for s in every)

    # With the ended ones still kept: the deleted one, after the live ones, saying why.
    with_ended = await keyed.http.get(
        "/v1/sessions", params={"include_ended": "true"}, headers={"X-API-Key": KEYS["delta"]}
    )
    assert with_ended.status_code == 200, with_ended.text
    sessions = with_ended.json()["sessions"]
    assert [s["id"] for s in sessions] == [newer["id"], older["id"], first["id"]]
    assert (sessions[2]["status"], sessions[2]["ended_reason"]) == ("ended", "deleted")
    assert not any(s["token"] in with_ended.text for s in every)
    # Bounded: a page of one is the newest, and says there is more.
    page = await keyed.http.get("/v1/sessions", params={"limit": 1}, headers=key("delta"))
    assert [s["id"] for s in page.json()["sessions"]] == [newer["id"]]
    assert page.json()["truncated"] is True

    # Another key sees its own, never delta's.
    other = await keyed.http.get("/v1/sessions", headers=key("epsilon"), params={"limit": 500})
    assert [s["id"] for s in other.json()["sessions"]] == [theirs["id"]]
    assert not any(s["token"] in other.text for s in every)
    too_many = await keyed.http.get("/v1/sessions", headers=key("epsilon"), params={"limit": 501})
    assert too_many.status_code == 422

    # Without a key, or with a wrong one: 401, like creating.
    missing = await keyed.http.get("/v1/sessions")
    assert missing.status_code == 401 and "API key" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await keyed.http.get("/v1/sessions", headers={"X-API-Key": "x" * 30})
    assert (wrong.status_code, wrong.json()["detail"]) == (401, "unknown API key")
    # A session token is not an API key, not even for listing its own key's sessions.
    by_token = await keyed.http.get("/v1/sessions", headers=token(newer))
    assert by_token.status_code == 401


async def test_requests_per_key_are_rate_limited(keyed: LiveServer) -> None:
    # burst: 12 requests; beta 1.
    # The burst passes at once; a listing counts like any call with a key.
    assert (await keyed.http.get("/v1/sessions", headers=key("burst"))).status_code == 200
    for _ in range(9):
        assert (await keyed.http.get("/metrics", headers=key("burst"))).status_code == 200
    limited = await keyed.http.get("/metrics", headers=key("burst"))
    assert limited.status_code == 429
    assert limited.json()["error"] == "too_many_requests"
    assert 1 <= int(limited.headers["retry-after"]) <= 10  # one request per 10 s
    assert (await keyed.http.get("/v1/sessions", headers=key("burst"))).status_code == 429
    # Per key: another key is unaffected.
    assert (await keyed.http.get("/metrics", headers=key("beta"))).status_code == 200


@pytest_asyncio.fixture(loop_scope="module")
async def guarded() -> AsyncIterator[LiveServer]:
    async for live in run_server(make_settings(api_keys=KEYS, auth_failures_per_minute=3)):
        yield live


def source(address: str) -> dict[str, str]:
    """Headers that make a request come from ``address``: the test client connects from
    127.0.0.1, which uvicorn trusts as a proxy by default, so it takes X-Forwarded-For."""
    return {"X-Forwarded-For": address}


async def test_failed_api_keys_are_limited_per_address(guarded: LiveServer) -> None:
    http, a = guarded.http, source("203.0.113.7")
    # Successes do not count: more of them than the address's 3 failed attempts.
    for _ in range(5):
        assert (await http.get("/metrics", headers={**a, **key("alpha")})).status_code == 200
    assert (await http.post("/v1/sessions", headers=a)).status_code == 401  # no key
    assert (await http.get("/v1/sessions", headers={**a, "X-API-Key": "x" * 30})).status_code == 401
    wrong_bearer = {**a, "Authorization": "Bearer " + "y" * 30}
    assert (await http.post("/v1/sessions", headers=wrong_bearer)).status_code == 401
    # Out of attempts: refused before the key is compared, so a right key is refused too (else
    # a right guess would still show itself).
    blocked = await http.post("/v1/sessions", headers={**a, **key("alpha")})
    assert blocked.status_code == 429, blocked.text
    assert blocked.json()["error"] == "too_many_requests"
    assert "failed authentication" in blocked.json()["detail"]
    assert 1 <= int(blocked.headers["retry-after"]) <= 20  # 3 a minute: one more per 20 s
    assert (await http.get("/metrics", headers=wrong_bearer)).status_code == 429
    assert (await http.get("/v1/sessions", headers={**a, **key("alpha")})).status_code == 429
    assert len(guarded.registry) == 0
    # Routes without credentials stay open to it; other addresses are unaffected.
    assert (await http.get("/healthz", headers=a)).status_code == 200
    session = await create(guarded, "alpha")  # from 127.0.0.1
    elsewhere = await http.post("/v1/sessions", headers={**source("198.51.100.9"), **key("beta")})
    assert elsewhere.status_code == 201, elsewhere.text
    # Session routes take a credential too: the blocked address cannot use a right token.
    own = await http.get(session["links"]["session"], headers={**a, **token(session)})
    assert own.status_code == 429


async def test_wrong_session_tokens_count_as_failures(guarded: LiveServer) -> None:
    http, c = guarded.http, source("192.0.2.44")
    session = await create(guarded, "gamma")
    url = session["links"]["session"]
    wrong = {**c, "Authorization": "Bearer " + "z" * 43}
    assert (await http.get(url, headers=wrong)).status_code == 401
    assert (await http.delete(url, headers=wrong)).status_code == 401
    assert (await http.get(url, headers=c)).status_code == 401  # none at all counts too
    refused = await http.get(url, headers={**c, **token(session)})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "too_many_requests" and "retry-after" in refused.headers
    offer = await http.post(
        session["links"]["offer"],
        content=b"v=0",
        headers={**c, **token(session), "Content-Type": "application/sdp"},
    )
    assert offer.status_code == 429
    # The session itself is untouched: its token still opens it from anywhere else.
    assert (await guarded.status(session) or {}).get("status") == "created"


async def test_failure_buckets_are_per_address_refill_and_are_bounded() -> None:
    now = 0.0
    limiter = RateLimiter(per_minute=3, burst=3, clock=lambda: now, max_keys=2)
    for _ in range(3):
        assert limiter.take("203.0.113.7") == 0.0
    assert limiter.wait("203.0.113.7") == pytest.approx(20.0)
    assert limiter.wait("203.0.113.7") == pytest.approx(20.0)  # looking spends nothing
    assert limiter.wait("198.51.100.9") == 0.0  # per address
    assert len(limiter) == 1  # and looking stores nothing
    now = 19.0
    assert limiter.wait("203.0.113.7") == pytest.approx(1.0)
    now = 20.0
    assert limiter.wait("203.0.113.7") == 0.0  # one attempt back every 20 s
    assert limiter.take("203.0.113.7") == 0.0
    assert limiter.take("203.0.113.7") == pytest.approx(20.0)
    # Bounded: a third address pushes out the least recently charged one, which starts afresh.
    limiter.take("198.51.100.9")
    limiter.take("192.0.2.44")
    assert len(limiter) == 2
    assert limiter.wait("203.0.113.7") == 0.0

    guard = Guard(make_settings(api_keys=KEYS, auth_failures_per_minute=2))
    for _ in range(2):
        guard.check_address("203.0.113.7")
        guard.failed("203.0.113.7")
    with pytest.raises(TooManyRequestsError) as refused:
        guard.check_address("203.0.113.7")
    assert refused.value.retry_after == 30
    guard.check_address("198.51.100.9")
    unlimited = Guard(make_settings(api_keys=KEYS, auth_failures_per_minute=None))
    for _ in range(50):
        unlimited.failed("203.0.113.7")
    unlimited.check_address("203.0.113.7")


async def test_bodies_over_the_cap_get_413_with_or_without_a_length(keyed: LiveServer) -> None:
    big = b"x" * (LIMIT + 1)
    # Declared too big: refused before the form is parsed, so before the key is even checked.
    declared = await keyed.http.post("/v1/sessions", files={"photo": ("a.jpg", big)})
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"] == "too_large" and f"{LIMIT}-byte limit" in declared.text
    # On every route, not only uploads.
    other = await keyed.http.request("DELETE", "/v1/sessions/" + "0" * 32, content=big)
    assert other.status_code == 413

    async def chunks(total: int) -> AsyncIterator[bytes]:
        for _ in range(total // 32_768 + 1):
            yield b"a=" + b"x" * 32_766

    # No Content-Length (chunked): counted as it is read, refused once over the cap.
    streamed = await keyed.http.post(
        "/v1/sessions",
        content=chunks(3 * LIMIT),
        headers={**key("gamma"), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["error"] == "too_large"
    await keyed.healthy()
    assert len(keyed.registry) == 0


async def test_cors_only_for_configured_origins(keyed: LiveServer) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    allowed = await keyed.http.options("/v1/sessions", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    evil = "https://evil.example"
    refused = await keyed.http.options("/v1/sessions", headers={"Origin": evil, **preflight})
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers

    simple = await keyed.http.get("/healthz", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "retry-after" in simple.headers["access-control-expose-headers"].lower()
    assert (
        "access-control-allow-origin"
        not in (await keyed.http.get("/healthz", headers={"Origin": evil})).headers
    )
    # Refusals carry the headers too, so a page on the allowed origin can read why.
    unauthorised = await keyed.http.post("/v1/sessions", headers={"Origin": ORIGIN})
    assert unauthorised.status_code == 401
    assert unauthorised.headers["access-control-allow-origin"] == ORIGIN

    # No origins configured: no CORS at all (the middleware answers preflights, so no server
    # needs to run to see it is absent).
    plain = create_app(make_settings())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=plain), base_url="http://test"
    ) as client:
        response = await client.options("/v1/sessions", headers={"Origin": ORIGIN, **preflight})
    assert "access-control-allow-origin" not in response.headers


@pytest_asyncio.fixture(loop_scope="module")
async def short_tokens() -> AsyncIterator[LiveServer]:
    async for live in run_server(make_settings(api_keys=KEYS, max_session_s=2.0)):
        yield live


async def test_tokens_expire_with_the_session(short_tokens: LiveServer) -> None:
    server = short_tokens
    session = await create(server, "alpha")
    assert session["token_expires_in_s"] == 2.0
    assert (await server.status(session) or {}).get("status") == "created"
    assert await wait_until(lambda: server.ended(session), 4)
    state = await server.status(session)
    assert state is not None
    assert (state["status"], state["ended_reason"]) == ("ended", "max duration")
    # From now on the token reads how the session ended, and nothing else.
    offer = await server.http.post(
        session["links"]["offer"],
        content=b"v=0",
        headers={**token(session), "Content-Type": "application/sdp"},
    )
    assert offer.status_code == 410 and "max duration" in offer.json()["detail"]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "reenact.example.org"])
async def test_no_keys_refuses_to_start_off_loopback(host: str) -> None:
    with pytest.raises(ConfigurationError, match="REENACT_API_KEYS"):
        create_app(make_settings(host=host))
    create_app(make_settings(host=host, api_keys=KEYS))  # with keys it may


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.9", "::1", "localhost"])
async def test_no_keys_is_dev_mode_on_loopback(host: str) -> None:
    create_app(make_settings(host=host))


async def test_reenact_serve_says_why_it_will_not_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REENACT_API_KEYS", raising=False)
    service_log = logging.getLogger("service")
    level = service_log.level
    try:
        assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 1
    finally:
        service_log.setLevel(level)
    error = capsys.readouterr().err
    assert "refusing to serve on '0.0.0.0' without API keys" in error
    assert "REENACT_API_KEYS" in error
