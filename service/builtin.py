"""The built-in avatars shipped in service/avatars/ (listed in avatars.json, licences in
LICENSE.md there)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from models.errors import BadInputError

AVATAR_DIR = Path(__file__).resolve().parent / "avatars"


@dataclass(frozen=True)
class Avatar:
    name: str
    title: str
    path: Path
    licence: str
    credit: str


class AvatarCatalog:
    """Read-only catalogue of the avatars in one directory."""

    def __init__(self, directory: Path = AVATAR_DIR) -> None:
        index = json.loads((directory / "avatars.json").read_text())
        self._avatars = {
            name: Avatar(
                name=name,
                title=entry["title"],
                path=directory / entry["file"],
                licence=entry["licence"],
                credit=entry["credit"],
            )
            for name, entry in index.items()
        }

    def __iter__(self) -> Iterator[Avatar]:
        return iter(self._avatars.values())

    def __contains__(self, name: object) -> bool:
        return name in self._avatars

    def get(self, name: str) -> Avatar:
        try:
            return self._avatars[name]
        except KeyError:
            known = ", ".join(sorted(self._avatars))
            raise BadInputError(f"unknown avatar {name!r} (built-in: {known})") from None
