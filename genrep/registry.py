"""Name -> class registries, so that a generator, a view or an objective is one registered class.

Modules that define entries are imported lazily the first time a registry is read, so importing
`genrep` stays cheap and adding an entry means adding one file to a package that the registry scans.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Raised for an unknown name; its message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def import_submodules(package: str) -> None:
    """Import every module of `package`, so the entries they register become visible."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


class Registry(Generic[T]):
    """A table of named entries (classes or builder functions) with aliases.

    `packages` are scanned with `import_submodules` before the first lookup.
    """

    def __init__(self, kind: str, packages: Iterable[str] = ()) -> None:
        self.kind = kind
        self._packages = tuple(packages)
        self._loaded = not self._packages
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: Iterable[str] = ()) -> Callable[[T], T]:
        def decorate(entry: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[name] = entry
            for alias in aliases:
                self._aliases[alias] = name
            return entry

        return decorate

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for package in self._packages:
                import_submodules(package)

    def canonical(self, name: str) -> str:
        """The registered name behind `name` (resolving aliases)."""
        self._load()
        name = self._aliases.get(name, name)
        if name not in self._entries:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            )
        return name

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        """Registered names and aliases, sorted."""
        self._load()
        return sorted([*self._entries, *self._aliases])

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries or name in self._aliases
