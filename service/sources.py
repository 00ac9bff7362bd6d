"""Source embeddings for new sessions: uploads decoded safely, built-in avatars cached.

Building an embedding (face detection and the generator's constant inputs) costs 50-200 ms,
so it runs in a thread.  A built-in avatar's embedding depends only on (name, size) and is
immutable, so it is computed once per process and shared by every session that picks it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np

from models.source import SourceEmbedding, build_source
from service.builtin import AvatarCatalog
from service.images import decode_image
from service.settings import Settings

log = logging.getLogger(__name__)


class Sources:
    def __init__(self, settings: Settings, catalog: AvatarCatalog) -> None:
        self._settings = settings
        self.catalog = catalog
        self._cache: dict[tuple[str, int], SourceEmbedding] = {}
        self._lock = asyncio.Lock()

    async def from_upload(self, data: bytes, size: int) -> SourceEmbedding:
        """Raises BadInputError (and subclasses) for unusable images, NoFaceError without a face."""
        photo = await asyncio.to_thread(self._decode, data)
        return await asyncio.to_thread(build_source, photo, size)

    async def builtin(self, name: str, size: int) -> SourceEmbedding:
        """The cached embedding of a built-in avatar; BadInputError for an unknown name."""
        avatar = self.catalog.get(name)
        async with self._lock:  # one build per key even when sessions arrive together
            source = self._cache.get((name, size))
            if source is None:
                source = await asyncio.to_thread(self._build, avatar.path, size)
                self._cache[(name, size)] = source
                log.info("built-in avatar %s embedded at %d px", name, size)
        return source

    def _build(self, path: Path, size: int) -> SourceEmbedding:
        return build_source(self._decode(path.read_bytes()), size)

    def _decode(self, data: bytes) -> np.ndarray:
        s = self._settings
        return decode_image(
            data,
            max_bytes=s.max_upload_bytes,
            max_pixels=s.max_image_pixels,
            max_side=s.max_image_side,
        )
