"""Short-lived TURN credentials from a secret shared with the TURN server.

This is the "TURN REST API" scheme (draft-uberti-behave-turn-rest-00) that coturn implements
under ``use-auth-secret`` + ``static-auth-secret``:

    username   = "<expiry as unix seconds>:<label>"
    credential = base64(HMAC-SHA1(secret, username))

The TURN server recomputes the HMAC from the username it receives, so it needs no user
database, and it refuses an allocation whose expiry lies in the past.  Credentials handed to a
browser are visible to whoever uses that browser; a short lifetime bounds what a leaked one is
worth.  coturn checks the expiry when an allocation is made, not afterwards: an established
call outlives its credential, so the lifetime only has to cover session creation to ICE.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Sequence

from service.settings import IceServer, Settings

SEPARATOR = ":"  # coturn's default `rest-api-separator`
TURN_SCHEMES = ("turn:", "turns:")


def turn_password(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)): the password coturn recomputes for ``username``."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def turn_credentials(
    secret: str, urls: Sequence[str], *, ttl_s: int, label: str, now: float
) -> IceServer:
    """One ``IceServer`` for ``urls`` whose credential expires ``ttl_s`` seconds after ``now``.

    ``now`` is passed in (``time.time()`` in the service) so the result is a pure function of
    the arguments.  ``label`` names the user in the TURN server's logs (the session id, say);
    it must not contain the separator, or the server would read the wrong expiry.
    """
    if not secret:
        raise ValueError("the TURN secret is empty")
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    if SEPARATOR in label:
        raise ValueError(f"the label must not contain {SEPARATOR!r}: {label!r}")
    if not urls:
        raise ValueError("no TURN urls")
    for url in urls:
        if not url.startswith(TURN_SCHEMES):
            raise ValueError(f"not a turn: or turns: url (STUN needs no credential): {url!r}")
    # Rounded up: a fractional `now` never shortens the lifetime below ttl_s.
    expiry = math.ceil(now) + ttl_s
    username = f"{expiry}{SEPARATOR}{label}" if label else str(expiry)
    return IceServer(urls=list(urls), username=username, credential=turn_password(secret, username))


def session_ice_servers(settings: Settings, session_id: str, now: float) -> list[IceServer]:
    """The ICE servers one session's client is told to use: the configured STUN/TURN servers,
    plus, when a TURN secret is set, a TURN credential for this session valid ``turn_ttl_s``."""
    servers = list(settings.ice_servers)
    if settings.turn_secret is not None and settings.turn_urls:
        secret = settings.turn_secret.get_secret_value()
        servers.append(
            turn_credentials(
                secret, settings.turn_urls, ttl_s=settings.turn_ttl_s, label=session_id, now=now
            )
        )
    return servers
