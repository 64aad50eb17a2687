"""Name -> entry registries: a generator, a view, an objective, a Tx recipe, a probe protocol or
dataset, and a steering edit are each one registered class (or builder function).

Every registry builds its entries the same way, `REGISTRY.build(name, *context, **options)`: the
context is what genrep hands the entry (a generator, a feature width), the options are the user's,
and an option the entry does not take is refused with a message listing those it does. Modules that
define entries are imported lazily the first time a registry is read, so importing `genrep` stays
cheap and adding an entry means adding one file to the package that the registry scans.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from genrep.errors import UsageError

T = TypeVar("T")


class RegistryError(UsageError):
    """An unknown name or an option its entry does not take; the message lists the valid ones."""


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
        """Decorator registering a class or builder under `name`; a class gets `name` as its
        `name` attribute, so the entry knows what it is called."""

        def decorate(entry: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
            if isinstance(entry, type):
                entry.name = name  # type: ignore[attr-defined]
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

    def canonical_names(self) -> list[str]:
        """Registered names without aliases, sorted (one per entry)."""
        self._load()
        return sorted(self._entries)

    def options(self, name: str, context: int = 0) -> dict[str, inspect.Parameter]:
        """The options entry `name` takes: its parameters after the first `context` positional ones.

        An entry that takes `**kwargs` accepts any option; its named parameters are still listed.
        """
        entry = self.get(name)
        parameters = list(inspect.signature(entry).parameters.values())
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        skipped = 0
        options = {}
        for parameter in parameters:
            if skipped < context and parameter.kind in positional:
                skipped += 1
            elif parameter.kind not in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ):
                options[parameter.name] = parameter
        return options

    def takes_any_option(self, name: str) -> bool:
        parameters = inspect.signature(self.get(name)).parameters.values()
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)

    def check_options(
        self,
        name: str,
        context: int = 0,
        *,
        option_label: Callable[[str], str] = repr,
        **options: Any,
    ) -> dict[str, Any]:
        """The options entry `name` is built with: those given, less those set to None (the
        entry's default); an option the entry does not take is a `RegistryError` naming the
        options it does take, shown with `option_label` (e.g. as flags)."""
        canonical = self.canonical(name)
        options = {key: value for key, value in options.items() if value is not None}
        accepted = self.options(canonical, context)
        unknown = sorted(set(options) - set(accepted))
        if unknown and not self.takes_any_option(canonical):
            takes = ", ".join(option_label(key) for key in accepted) or "no options"
            raise RegistryError(
                f"{self.kind} {canonical!r} does not take {', '.join(map(option_label, unknown))}; "
                f"it takes: {takes}"
            )
        return options

    def build(
        self,
        name: str,
        *context: Any,
        option_label: Callable[[str], str] = repr,
        **options: Any,
    ) -> Any:
        """Build entry `name` with genrep's `context` and the user's `options` (see
        `check_options`)."""
        options = self.check_options(name, len(context), option_label=option_label, **options)
        return self._entries[self.canonical(name)](*context, **options)
