"""A registry by name whose entries are imported on first use ("module:Class")."""
from __future__ import annotations

import importlib
from typing import Generic, Iterator, TypeVar

from agentsync.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to classes; an unknown name's error lists the available ones."""

    def __init__(self, kind: str, entries: dict[str, str]) -> None:
        self.kind, self._entries, self._loaded = kind, dict(entries), {}

    def __getitem__(self, name: str) -> type[T]:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(self._entries)}")
        if name not in self._loaded:
            module, attr = self._entries[name].split(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)
        return self._loaded[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> Iterator[tuple[str, type[T]]]:
        return ((name, self[name]) for name in self._entries)
