"""Service-level errors, in the same hierarchy as the models' (see models/errors.py).

Each is mapped to an HTTP status in one place, :mod:`service.api.errors`.
"""

from __future__ import annotations

from models.errors import BadInputError, ReenactError


class PayloadTooLargeError(BadInputError):
    """An upload or SDP body over its size limit, or an image with too many pixels."""


class UnsupportedMediaError(BadInputError):
    """A body of a type the endpoint does not take (not an image, wrong content type)."""


class SessionNotFoundError(ReenactError):
    """No live session has this id (it never existed, ended, or expired)."""


class SessionEndedError(SessionNotFoundError):
    """The session existed and has ended recently; its id is kept a while to say how it ended.

    A subclass of SessionNotFoundError: whatever treats "not live" one way keeps working.
    """


class SessionConflictError(ReenactError):
    """The request does not fit the session's state (e.g. a second offer)."""


class UnauthorizedError(ReenactError):
    """The API key or session token is missing, wrong or expired."""


class ServerFullError(ReenactError):
    """max_sessions are live; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyRequestsError(ReenactError):
    """One API key is over its request rate or its share of sessions; retry after
    ``retry_after`` seconds.  Unlike ServerFullError, other keys are unaffected."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigurationError(ReenactError):
    """The settings are unsafe or inconsistent; the server refuses to start."""


class NotSupportedError(ReenactError):
    """A valid option whose implementation has not landed yet."""
