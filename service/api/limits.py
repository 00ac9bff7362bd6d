"""Request limits: body size on every route, requests per API key, sessions per API key, and
the token bucket behind failed authentication per client address (``service.api.auth``).

Each is an object owned by one app (tests build many apps in one process), never a global.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import TooManyRequestsError

log = logging.getLogger(__name__)


class RateLimiter:
    """A token bucket per key: holds up to ``burst`` requests and refills at ``per_minute``.

    A burst (a page load, a retry) passes at once; a sustained rate above ``per_minute`` does
    not.  With ``max_keys`` at most that many buckets are kept, the least recently charged
    dropped first (it starts full again if it comes back): for keys a client chooses, such as
    its address.  Without it, the keys must be bounded by the configuration (API key ids).
    """

    def __init__(
        self,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int | None = None,
    ) -> None:
        self._per_s = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Spend one request: 0.0 when admitted, else the seconds until one would be."""
        now = self._clock()
        tokens = self._tokens(key, now)
        admitted = tokens >= 1.0
        if admitted:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if self._max_keys is not None and len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return 0.0 if admitted else self._wait(tokens)

    def wait(self, key: str) -> float:
        """The seconds until ``key`` could spend a request (0.0: now), spending nothing."""
        return self._wait(self._tokens(key, self._clock()))

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self._burst, now))
        return min(self._burst, tokens + (now - at) * self._per_s)

    def _wait(self, tokens: float) -> float:
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._per_s


class SessionQuota:
    """At most ``per_key`` sessions per API key: live ones plus those this app is creating.

    The host reports the live ones (``HostLoad.by_owner``); creations in flight are counted
    here, since a source embedding takes long enough for a burst of requests to overshoot.
    """

    def __init__(self, per_key: int | None, retry_after_s: int) -> None:
        self.per_key = per_key
        self._retry_after_s = retry_after_s
        self._creating: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, owner: str | None, live: int) -> Iterator[None]:
        """Hold a place for ``owner`` while its session is created; TooManyRequestsError if its
        ``live`` sessions and those being created already fill its quota."""
        if owner is None or self.per_key is None:
            yield
            return
        if live + self._creating[owner] >= self.per_key:
            log.info("API key %s: at its %d sessions", owner, self.per_key)
            raise TooManyRequestsError(
                f"API key {owner!r} already has {self.per_key} sessions (its limit); end one "
                "or retry later",
                retry_after=self._retry_after_s,
            )
        self._creating[owner] += 1
        try:
            yield
        finally:
            self._creating[owner] -= 1
            if not self._creating[owner]:
                del self._creating[owner]


class _BodyTooLarge(Exception):
    """Raised into the app by the counting ``receive`` once a body passes the limit."""


class BodySizeLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413, on every route.

    A declared ``Content-Length`` over the limit is refused before the app runs, so nothing is
    parsed or spooled.  A body without one (chunked) is counted as the app reads it; past the
    limit the app's ``receive`` raises, whatever the app then sends is dropped, and the 413
    goes out instead.  The rest of the body is discarded by the server as it arrives (closing
    the connection at once instead would reset it under the client, which then never reads
    the 413).  Starlette's own RequestBodyLimitMiddleware works alike, but answers in plain
    text, not the API's JSON error shape.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send, f"a body of {declared} bytes")
            return

        received = 0
        over = started = False

        async def counted_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                return  # the app's answer to a body it could not read; the 413 replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await self._refuse(scope, receive, send, f"a streamed body of over {received} bytes")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        log.info("%s %s -> 413: %s", scope.get("method"), scope.get("path"), what)
        response = JSONResponse(
            {"detail": f"{what} is over the {self.limit}-byte limit", "error": "too_large"},
            status_code=413,
        )
        await response(scope, receive, send)
