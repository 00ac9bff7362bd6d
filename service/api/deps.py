"""Request dependencies, as ``...Dep`` aliases for route signatures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.api.auth import Guard
from service.errors import UnauthorizedError
from service.state import ServiceState

_bearer = HTTPBearer(auto_error=False, description="The token returned by POST /v1/sessions")
_key_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKeyBearer",
    description="An API key (REENACT_API_KEYS); not needed in local/dev mode",
)
_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An API key, instead of the bearer header"
)


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_guard(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard


GuardDep = Annotated[Guard, Depends(get_guard)]


def client_address(request: Request) -> str:
    """The caller's IP address: the TCP peer's, or, when that peer is a trusted proxy (uvicorn's
    ``proxy_headers``, trusting ``FORWARDED_ALLOW_IPS``), the one it forwards."""
    return request.client.host if request.client is not None else ""


async def failure_limit(request: Request, guard: GuardDep) -> AsyncIterator[None]:
    """Every route that checks a credential goes through here first: an address out of failed
    attempts is refused (429) before its credential is compared, and a 401 raised later in the
    request (by the key or token check) is charged to its address."""
    address = client_address(request)
    guard.check_address(address)
    try:
        yield
    except UnauthorizedError:
        guard.failed(address)
        raise


FailureLimitDep = Annotated[None, Depends(failure_limit)]


def api_key(
    guard: GuardDep,
    _limit: FailureLimitDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_key_bearer)],
    header: Annotated[str | None, Depends(_key_header)],
) -> str | None:
    """The caller's API key id, once checked and charged to its rate; None in dev mode."""
    return guard.admit(bearer.credentials if bearer is not None else header)


ApiKeyDep = Annotated[str | None, Depends(api_key)]


@dataclass(frozen=True)
class SessionRef:
    """A session id from the path and the token the caller presented (checked by the host)."""

    id: str
    token: str | None


def session_ref(
    session_id: str,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _limit: FailureLimitDep,
) -> SessionRef:
    """The token comes only in the Authorization header: a URL's query string ends up in access
    logs, proxy logs and browser history, where a live session's token must not."""
    return SessionRef(session_id, credentials.credentials if credentials is not None else None)


SessionRefDep = Annotated[SessionRef, Depends(session_ref)]
