"""Request dependencies, as ``...Dep`` aliases for route signatures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.state import ServiceState

_bearer = HTTPBearer(auto_error=False, description="The token returned by POST /v1/sessions")


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


@dataclass(frozen=True)
class SessionRef:
    """A session id from the path and the token the caller presented (checked by the host)."""

    id: str
    token: str | None


def session_ref(
    session_id: str,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    token: Annotated[str | None, Query(description="Session token, if no bearer header")] = None,
) -> SessionRef:
    return SessionRef(session_id, credentials.credentials if credentials is not None else token)


SessionRefDep = Annotated[SessionRef, Depends(session_ref)]
