"""The one protocol every inference backend implements.

Modelled on Polygraphy's runners: ``infer(dict) -> dict`` of numpy arrays keyed by graph
input/output names, usable as a context manager.  Building an engine (export, TensorRT
compilation) is kept apart from running one; runners only load what was built.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self, runtime_checkable

import numpy as np

from models.closeable import Closeable


@runtime_checkable
class Engine(Protocol):
    """Runs one compiled model.  ``infer`` must be safe to call from several threads."""

    name: str

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class EngineBase(Closeable):
    """What the runners share: a name for logs, ``close`` and the context manager."""

    name = "engine"

    def close(self) -> None:
        """Release the backend's resources (sessions, buffers)."""
