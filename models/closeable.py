"""One base for the objects that hold native resources (trackers, engines).

mediapipe graphs, onnxruntime sessions and TensorRT contexts are freed by ``close()``, not by
the garbage collector at some later time; ``with`` makes that the natural way to hold them.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closeable:
    """``close()`` frees what the object holds; ``with obj:`` calls it on the way out."""

    def close(self) -> None:
        """Release native resources; subclasses override it."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
