"""Request dependencies, as ``...Dep`` aliases for route signatures."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.sessions import Session
from service.state import ServiceState

_bearer = HTTPBearer(auto_error=False, description="The token returned by POST /v1/sessions")


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_session(
    session_id: str,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    token: Annotated[str | None, Query(description="Session token, if no bearer header")] = None,
) -> Session:
    """The session named in the path, once its token checks out (404 before 401)."""
    session = state.registry.get(session_id)
    session.check_token(credentials.credentials if credentials is not None else token)
    return session


SessionDep = Annotated[Session, Depends(get_session)]
