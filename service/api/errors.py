"""The one place errors become HTTP statuses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from models.errors import BadInputError, EngineError, NoFaceError, ReenactError
from service.errors import (
    NotSupportedError,
    PayloadTooLargeError,
    ServerFullError,
    SessionConflictError,
    SessionEndedError,
    SessionNotFoundError,
    TooManyRequestsError,
    UnauthorizedError,
    UnsupportedMediaError,
)

log = logging.getLogger(__name__)

# First match wins, so subclasses come before their bases.
STATUS: tuple[tuple[type[ReenactError], int, str], ...] = (
    (NoFaceError, 422, "no_face"),
    (PayloadTooLargeError, 413, "too_large"),
    (UnsupportedMediaError, 415, "unsupported_media"),
    (BadInputError, 400, "bad_input"),
    (UnauthorizedError, 401, "unauthorized"),
    (SessionEndedError, 410, "ended"),
    (SessionNotFoundError, 404, "not_found"),
    (SessionConflictError, 409, "conflict"),
    (TooManyRequestsError, 429, "too_many_requests"),
    (NotSupportedError, 501, "not_supported"),
    (ServerFullError, 503, "server_full"),
    (EngineError, 500, "engine"),
    (ReenactError, 500, "internal"),
)


def status_of(error: ReenactError) -> tuple[int, str]:
    for kind, status, code in STATUS:
        if isinstance(error, kind):
            return status, code
    return 500, "internal"  # unreachable: ReenactError is last


async def handle_reenact_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ReenactError)
    status, code = status_of(error)
    headers: dict[str, str] = {}
    if isinstance(error, ServerFullError | TooManyRequestsError):
        headers["Retry-After"] = str(error.retry_after)
    elif isinstance(error, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    if status == 500:
        log.error("%s %s failed: %s", request.method, request.url.path, error, exc_info=error)
    else:
        log.info("%s %s -> %d: %s", request.method, request.url.path, status, error)
    return JSONResponse({"detail": str(error), "error": code}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ReenactError, handle_reenact_error)
