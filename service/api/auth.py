"""Who may use the API: integrators' API keys, checked in constant time, and their limits.

Two kinds of credential, never interchangeable:

* an **API key** (``REENACT_API_KEYS``: key id -> secret) on the routes that spend the server's
  resources for someone or read across sessions: ``POST /v1/sessions``, ``GET /v1/sessions``
  (the key's own) and ``GET /metrics``.  The key id becomes the session's owner, and per-key
  limits (requests per minute, sessions at once) count against it;
* a **session token** (returned by ``POST /v1/sessions``) on that one session's routes, so a
  browser can be handed a token without the integrator's key (checked by the session host).

With no keys configured the service is in local/dev mode: nothing is asked for, and
:meth:`service.settings.Settings.check_exposure` keeps such a server on loopback.

Failed attempts (a missing or unknown key, a wrong or expired session token) are limited per
client address, so neither credential can be guessed at speed: once an address has spent its
``auth_failures_per_minute``, every request of its that needs a credential is refused (429)
*before* the credential is compared, a right one included, until its bucket refills; answering
a right guess differently would let the guessing go on.  The price: users sharing an address
(a NAT, a proxy that is not trusted, see docs/service.md) share its failures too.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Mapping

from pydantic import SecretStr

from service.api.limits import RateLimiter, SessionQuota
from service.errors import TooManyRequestsError, UnauthorizedError
from service.settings import Settings

log = logging.getLogger(__name__)


class ApiKeys:
    """The configured keys, as SHA-256 digests: comparing equal-length digests keeps both a
    secret's content and its length out of the comparison's timing."""

    def __init__(self, keys: Mapping[str, SecretStr]) -> None:
        self._digests = [(key_id, _digest(s.get_secret_value())) for key_id, s in keys.items()]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def identify(self, presented: str) -> str | None:
        """The id of the key whose secret is ``presented``, or None.

        Every configured key is compared, with :func:`hmac.compare_digest`, whether or not an
        earlier one matched: how long this takes says nothing about which key (if any) matched.
        """
        digest = _digest(presented)
        found: str | None = None
        for key_id, expected in self._digests:
            if hmac.compare_digest(digest, expected):
                found = key_id
        return found


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


# Client addresses whose failures are remembered; past this, the least recently failed one is
# forgotten (about 100 bytes each).  Whoever can fail from more addresses than this within the
# refill time can guess in parallel anyway: a per-address limit is not what stops them.
MAX_FAILING_ADDRESSES = 10_000


class Guard:
    """The app's access checks, per-key limits and failed-attempt limit per client address; one
    per app, built by ``create_app``."""

    def __init__(self, settings: Settings) -> None:
        self.keys = ApiKeys(settings.api_keys)
        per_minute = settings.rate_limit_per_minute
        self.rate = (
            RateLimiter(per_minute, settings.rate_limit_burst) if per_minute is not None else None
        )
        self.quota = SessionQuota(settings.max_sessions_per_key, settings.retry_after_s)
        failures = settings.auth_failures_per_minute
        # A bucket of `failures` failed attempts per address, refilled at that rate per minute.
        self.failures = (
            RateLimiter(failures, failures, max_keys=MAX_FAILING_ADDRESSES)
            if failures is not None
            else None
        )

    def check_address(self, address: str) -> None:
        """TooManyRequestsError if ``address`` has no failed attempts left: called before any
        credential of its is compared.  Spends nothing."""
        if self.failures is None:
            return
        wait_s = self.failures.wait(address)
        if wait_s > 0:
            retry_after = max(1, math.ceil(wait_s))
            raise TooManyRequestsError(
                f"too many failed authentication attempts from this address; retry in "
                f"{retry_after} s",
                retry_after=retry_after,
            )

    def failed(self, address: str) -> None:
        """Charge one failed authentication (answered 401) to ``address``."""
        if self.failures is None:
            return
        counted = self.failures.take(address) == 0.0
        if counted and self.failures.wait(address) > 0:  # that was its last attempt
            log.warning("client %s: out of failed authentication attempts", address)

    def admit(self, presented: str | None) -> str | None:
        """Check an API key and charge one request to it; returns its key id (None in dev mode).

        Raises UnauthorizedError (missing or unknown key) or TooManyRequestsError (over the
        key's request rate).
        """
        if not self.keys:
            return None
        if not presented:
            raise UnauthorizedError(
                "this server needs an API key: send `Authorization: Bearer <key>` or "
                "`X-API-Key: <key>`"
            )
        key_id = self.keys.identify(presented)
        if key_id is None:
            raise UnauthorizedError("unknown API key")
        if self.rate is not None:
            wait_s = self.rate.take(key_id)
            if wait_s > 0:
                log.info("API key %s: over its request rate", key_id)
                raise TooManyRequestsError(
                    f"too many requests for API key {key_id!r}; retry in {math.ceil(wait_s)} s",
                    retry_after=max(1, math.ceil(wait_s)),
                )
        return key_id
