"""Name -> factory registries, one per kind (topology, dataset), matched case-insensitively."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from invssl.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, tuple[str, T]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        key = name.lower()
        if key in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[key] = (name, obj)

    def names(self) -> list[str]:
        return [name for name, _ in self._items.values()]

    def get(self, name: str) -> T:
        try:
            return self._items[name.lower()][1]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}") from None

    def canonical(self, name: str) -> str:
        self.get(name)
        return self._items[name.lower()][0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
