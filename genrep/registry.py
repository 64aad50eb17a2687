"""Name -> entry registries: a generator, a view, an objective, a Tx recipe, a probe protocol or
dataset, and a steering edit are each one registered class (or builder function).

Every registry builds its entries the same way, `REGISTRY.build(name, *context, **options)`: the
context is what genrep hands the entry (a generator, a feature width), the options are the user's,
and an option the entry does not take is refused with a message listing those it does. Modules that
define entries are imported lazily the first time a registry is read, so importing `genrep` stays
cheap and adding an entry means adding one file to the package that the registry scans.

A registry may also take entries from outside genrep (plugins), without editing genrep:

- installed packages that declare an entry point in the registry's group (e.g.
  `genrep.generators`); listing them reads package metadata only, and an entry point is imported
  when it is first used;
- code references, `package.module:attr` or `path/to/file.py:attr`, which import that module or
  file when they are resolved. The CLI takes a reference only from the command line, never from a
  --config file (see `genrep.options.RegistryChoice`).

`source(name)` says where an entry came from, for the manifests of what it made.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from genrep.errors import UsageError, UserError, one_line, warn
from genrep.io import sha256_file

T = TypeVar("T")


class RegistryError(UsageError):
    """An unknown name or an option its entry does not take; the message lists the valid ones."""


class PluginError(UserError):
    """Plugin code (an entry point or a code reference) that cannot be imported or used."""


#: where a registered entry (one defined inside genrep) comes from
BUILTIN_SOURCE = {"from": "genrep"}


def is_reference(name: str) -> bool:
    """True for `module:attr` and `path/to/file.py:attr`: names of code, not of registered entries
    (which never hold a colon)."""
    target, sep, attr = str(name).rpartition(":")
    return bool(sep and target.strip() and attr.strip())


def _failure(err: BaseException) -> str:
    """An exception raised by plugin code, in one line that says where it happened."""
    if isinstance(err, SyntaxError):
        return f"SyntaxError: {err.msg} ({err.filename}, line {err.lineno})"
    frames = traceback.extract_tb(err.__traceback__)
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {one_line(str(err))}{where}"


def _import_file(path: Path, digest: str) -> Any:
    """Import the Python file `path` as a module of its own (once per file content)."""
    stem = re.sub(r"\W", "_", path.stem)
    name = f"genrep_plugin_{stem}_{digest[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RegistryError(f"{path} is not a Python file genrep can import")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # classes defined in the file can find their module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise PluginError(f"{path} failed to import: {_failure(err)}") from err
    return module


def _import_module(name: str, reference: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(err.name + ".")):
            raise RegistryError(
                f"{reference!r}: no module named {err.name!r}; install the package that "
                "provides it, or check the name"
            ) from None
        raise PluginError(f"{reference!r} failed to import: {_failure(err)}") from err
    except Exception as err:
        raise PluginError(f"{reference!r} failed to import: {_failure(err)}") from err


def _distribution_of(module: Any) -> dict[str, str]:
    """The installed distribution (name, version) that provides `module`, if there is one."""
    top = module.__name__.partition(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return {"distribution": dist, "version": importlib.metadata.version(dist)}
        except importlib.metadata.PackageNotFoundError:
            continue
    return {}


def load_reference(reference: str) -> tuple[Any, dict[str, Any]]:
    """Import the object that `module:attr` or `path/to/file.py:attr` names; returns it and its
    source: the file's absolute path and sha256, or the module and the distribution providing it
    (or, for a module no distribution provides, its file and that file's sha256)."""
    target, _, attr = reference.rpartition(":")
    target, attr = target.strip(), attr.strip()
    if not all(part.isidentifier() for part in attr.split(".")):
        raise RegistryError(
            f"{reference!r}: {attr!r} is not an attribute name; write package.module:attr or "
            "path/to/file.py:attr"
        )
    if target.endswith(".py") or "/" in target or os.sep in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise RegistryError(f"{reference!r}: there is no file {path}")
        digest = sha256_file(path)
        module = _import_file(path, digest)
        source: dict[str, Any] = {"from": "file", "path": str(path), "sha256": digest}
    else:
        if not all(part.isidentifier() for part in target.split(".")):
            raise RegistryError(
                f"{reference!r}: {target!r} is neither a module name nor a .py file; write "
                "package.module:attr or path/to/file.py:attr"
            )
        module = _import_module(target, reference)
        source = {"from": "module", "module": target, **_distribution_of(module)}
        if "distribution" not in source and getattr(module, "__file__", None):
            source.update(
                path=str(Path(module.__file__).resolve()), sha256=sha256_file(module.__file__)
            )
    value = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise RegistryError(f"{reference!r}: {target} has no attribute {attr!r}")
        value = getattr(value, part)
    source["attr"] = attr
    return value, source


def import_submodules(package: str) -> None:
    """Import every module of `package`, so the entries they register become visible."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


class Registry(Generic[T]):
    """A table of named entries (classes or builder functions) with aliases.

    `packages` are scanned with `import_submodules` before the first lookup. With `entry_points`,
    installed packages add entries under that entry-point group; with `references`, a name may
    also be a code reference (`module:attr`, `file.py:attr`). Registered names win over entry
    points of the same name.
    """

    def __init__(
        self,
        kind: str,
        packages: Iterable[str] = (),
        *,
        entry_points: str | None = None,
        references: bool = False,
    ) -> None:
        self.kind = kind
        self._packages = tuple(packages)
        self._loaded = not self._packages
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self.entry_point_group = entry_points
        self.accepts_references = references
        #: entry points already imported: name -> (entry, source)
        self._plugins: dict[str, tuple[T, dict[str, Any]]] = {}
        self._warned: set[str] = set()

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

    def _entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        """The installed entry points of the registry's group by name (read from package metadata
        on every call, so a package installed meanwhile shows up; nothing is imported)."""
        if self.entry_point_group is None:
            return {}
        self._load()
        found: dict[str, importlib.metadata.EntryPoint] = {}
        for entry_point in importlib.metadata.entry_points(group=self.entry_point_group):
            name = entry_point.name
            taken = name in self._entries or name in self._aliases or name in found
            if taken or is_reference(name):
                if f"{name}={entry_point.value}" not in self._warned:
                    self._warned.add(f"{name}={entry_point.value}")
                    warn(
                        f"ignoring the {self.entry_point_group} entry point {name!r} "
                        f"({entry_point.value}, {_dist_label(entry_point)}): that {self.kind} "
                        "name is taken"
                    )
                continue
            found[name] = entry_point
        return found

    def canonical(self, name: str) -> str:
        """The name behind `name` (resolving aliases). A code reference is imported here, so a
        broken one fails early; it stays its own name."""
        self._load()
        name = self._aliases.get(name, name)
        if name in self._entries or name in self._plugins:
            return name
        if self.accepts_references and is_reference(name):
            self._plugin(name)
            return name
        if name not in self._entry_points():
            hint = (
                ", package.module:attr or path/to/file.py:attr" if self.accepts_references else ""
            )
            raise RegistryError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}{hint}"
            )
        return name

    def _plugin(self, name: str) -> tuple[T, dict[str, Any]]:
        """Import the code reference or entry point `name` and check it is callable. Entry points
        are imported once; a reference is resolved on every call (Python caches the module, a
        file's module per content), so an edited file is seen with its new sha256."""
        if is_reference(name):
            entry, source = load_reference(name)
        elif name in self._plugins:
            return self._plugins[name]
        else:
            entry_point = self._entry_points()[name]
            source = {
                "from": "entry-point",
                "group": self.entry_point_group,
                "name": name,
                "value": entry_point.value,
                **_dist_info(entry_point),
            }
            try:
                entry = entry_point.load()
            except Exception as err:
                raise PluginError(
                    f"{self.kind} {name!r} ({entry_point.value}, {_dist_label(entry_point)}) "
                    f"failed to load: {_failure(err)}"
                ) from err
        if not callable(entry):
            raise PluginError(
                f"{self.kind} {name!r} names a value of type {type(entry).__name__}, not the class or "
                f"function that builds a {self.kind}"
            )
        if not is_reference(name):
            self._plugins[name] = (entry, source)
        return entry, source

    def get(self, name: str) -> T:
        name = self.canonical(name)
        return self._entries[name] if name in self._entries else self._plugin(name)[0]

    def source(self, name: str) -> dict[str, Any]:
        """Where entry `name` comes from: genrep itself, an installed entry point (its distribution
        and version) or a code reference (the module's distribution, or the file and its sha256)."""
        name = self.canonical(name)
        return dict(BUILTIN_SOURCE) if name in self._entries else dict(self._plugin(name)[1])

    def names(self) -> list[str]:
        """Registered names, aliases and installed entry points, sorted."""
        self._load()
        return sorted([*self._entries, *self._aliases, *self._entry_points()])

    def plugin_names(self) -> dict[str, str]:
        """Installed entry points: name -> `distribution version` that provides it."""
        return {name: _dist_label(ep) for name, ep in sorted(self._entry_points().items())}

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries or name in self._aliases or name in self._entry_points()

    def canonical_names(self) -> list[str]:
        """Registered names and entry points without aliases, sorted (one per entry)."""
        self._load()
        return sorted([*self._entries, *self._entry_points()])

    def options(self, name: str, context: int = 0) -> dict[str, inspect.Parameter]:
        """The options entry `name` takes: its parameters after the first `context` positional ones.

        An entry that takes `**kwargs` accepts any option; its named parameters are still listed.
        """
        entry = self.get(name)
        parameters = list(_signature(entry).parameters.values())
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
        parameters = _signature(self.get(name)).parameters.values()
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
        entry's default); an option the entry does not take, or a required one left out, is a
        `RegistryError` naming the options it does take, shown with `option_label` (e.g. as
        flags)."""
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
        missing = [
            key
            for key, parameter in accepted.items()
            if parameter.default is inspect.Parameter.empty and key not in options
        ]
        if missing:
            raise RegistryError(
                f"{self.kind} {canonical!r} needs {', '.join(map(option_label, missing))}"
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
        factory = cast(Callable[..., Any], self.get(name))
        return factory(*context, **options)


def _signature(entry: object) -> inspect.Signature:
    """The signature of a registered class or function (entries are callables by contract)."""
    return inspect.signature(cast(Callable[..., Any], entry))


def _dist_info(entry_point: importlib.metadata.EntryPoint) -> dict[str, str]:
    dist = getattr(entry_point, "dist", None)
    return {"distribution": dist.name, "version": dist.version} if dist is not None else {}


def _dist_label(entry_point: importlib.metadata.EntryPoint) -> str:
    info = _dist_info(entry_point)
    return f"{info['distribution']} {info['version']}" if info else "unknown distribution"
