"""Name -> class tables of components (estimators, tasks): a dict filled by a decorator, and a
catalog of the registered names that knows them without importing a module.

Components from outside pgbench work wherever a name does: an import string `pkg.module:Class`,
or the name of an entry point that an installed package declares in the group `pgbench.tasks`
or `pgbench.estimators` (listed without importing its module). A class given by import string
runs under the path-safe name `pkg.module.Class` (run folders, MLflow), which resolves again;
a saved config names it by its import string or entry point, with `@version` of the package
that installed it (`pkg.module:Class@0.1.0`), checked when it is resolved again.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from pgbench.errors import ConfigError
from pgbench.fields import build

T = TypeVar("T")


def unknown_name(kind: str, name: str, names: list[str]) -> ConfigError:
    """The error for a name nothing is registered under, listing the registered ones."""
    return ConfigError(f"unknown {kind} {name!r}; registered: {', '.join(names)}")


def import_object(spec: str, key: str) -> Any:
    """The object an import string `pkg.module:attribute` names (a user's task, estimator or
    reward function); a one-line ConfigError naming `key` when it is malformed, its module does
    not import, or the module has no such attribute."""
    module, colon, attribute = spec.partition(":")
    if not (colon and module and attribute):
        raise ConfigError(f"{key}={spec!r} is not an import string; use pkg.module:Name")
    try:
        found = importlib.import_module(module)
    except Exception as err:  # a user's module may raise anything while importing
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise ConfigError(f"{key}={spec}: module {module!r} does not import ({reason})") from None
    try:
        return getattr(found, attribute)
    except AttributeError:
        raise ConfigError(f"{key}={spec}: module {module!r} has no {attribute!r}") from None


def entry_points(kind: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The entry points of installed packages in the group `pgbench.<kind>s`, by name (their
    modules are not imported); read once per sys.path (a scan of every installed package)."""
    return _entry_points(f"pgbench.{kind}s", tuple(sys.path))


@functools.lru_cache(maxsize=16)
def _entry_points(group: str, path: tuple[str, ...]) -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


@functools.cache
def package_version(module: str) -> str:
    """The version of the installed distribution that owns `module` (empty if none does)."""
    owners = importlib.metadata.packages_distributions().get(module.partition(".")[0], [])
    return importlib.metadata.version(owners[0]) if owners else ""


def plugin_class(kind: str, name: str) -> type | None:
    """The class `name` stands for when it is not a built-in: an entry point's name, an import
    string `pkg.module:Class` or a class's run name `pkg.module.Class`, each optionally with
    `@version` (checked against the installed package); None if `name` is none of these.

    A class found by entry point runs under that name; one found by import string without a
    name of its own (`@register`) under `pkg.module.Class`."""
    spec, _, pinned = name.partition("@")
    point = entry_points(kind).get(spec)
    if point is None and not ({":", "."} & set(spec)):
        return None
    target = point.value if point else spec if ":" in spec else ":".join(spec.rsplit(".", 1))
    found = import_object(target, kind)
    if not isinstance(found, type):
        what = type(found).__name__
        raise ConfigError(f"{kind}={spec} names a {what}, not a class")
    version = package_version(found.__module__)
    if pinned and version and pinned != version:
        raise ConfigError(
            f"{kind}={name}: the config was made with version {pinned} of its package, "
            f"{version} is installed; install {pinned} or start a new run"
        )
    if not found.__module__.startswith("pgbench."):
        if point is not None:
            found.name = spec  # type: ignore[attr-defined]
        elif "name" not in vars(found):
            found.name = target.replace(":", ".")  # type: ignore[attr-defined]
    return found


def saved_name(kind: str, cls: type) -> str:
    """How a saved config names the component class `cls` so that it resolves again: its name
    (pgbench's own, an entry point's), else its import string; `@version` of its package."""
    name: str = getattr(cls, "name", "")
    if cls.__module__.startswith("pgbench."):
        return name
    if name not in entry_points(kind):
        name = f"{cls.__module__}:{cls.__qualname__}"
    version = package_version(cls.__module__)
    return f"{name}@{version}" if version else name


def plugin_fingerprint(obj: Any) -> str:
    """A hash of the source of the code outside pgbench that defines `obj` (a class or a
    function): every .py file of its top-level package, or its module's file; "" for pgbench's
    own code (hashed with the rest of pgbench) and for code without a source file. A changed
    plug-in changes it (the start-evaluation cache key)."""
    name = getattr(obj, "__module__", None) or ""
    top = sys.modules.get(name.partition(".")[0])
    module = sys.modules.get(name)
    if top is None or module is None or top.__name__ == "pgbench":
        return ""
    here = getattr(top, "__file__", None) or getattr(module, "__file__", None)
    if not here:
        return ""
    root = Path(here).parent if Path(here).name == "__init__.py" else Path(here)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
        digest.update(f"{path.relative_to(root.parent)}\0".encode() + path.read_bytes())
    return digest.hexdigest()[:24]


class Registry(Generic[T]):
    """Classes registered by name; `get` builds one with checked fields."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: register under `name`, refusing duplicates."""

        def decorate(cls: type[T]) -> type[T]:
            if name in self.classes:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            cls.name = name  # type: ignore[attr-defined]
            self.classes[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self.classes)

    def get_class(self, name: str) -> type[T]:
        """The class registered as `name`, or one from outside pgbench (plugin_class), or a
        ConfigError listing the valid names."""
        if name in self.classes:
            return self.classes[name]
        found = plugin_class(self.kind, name)
        if found is None:
            raise unknown_name(self.kind, name, self.names())
        return found

    def get(self, name: str, **fields: Any) -> T:
        """Build the `name` component from fields by key (values or `key=value` text), checked."""
        return build(self.get_class(name), f"{self.kind}.", fields)


class Catalog(Generic[T]):
    """The registered names of one kind of component, each with the `module:Class` that defines
    it (`"rloo": "pgbench.estimators.rloo:RLOO"`): names are listed and checked without importing
    anything, and a class is imported only when it is asked for (its module registers it).

    Names from outside pgbench (plugin_class) are taken too: an entry point's name is checked
    without importing its module; an import string imports it, and the class must derive from
    `base` (`module:Class`)."""

    def __init__(self, kind: str, paths: Mapping[str, str], base: str = "") -> None:
        self.kind = kind
        self.paths = dict(paths)
        self.base = base

    def names(self) -> list[str]:
        """The built-in names."""
        return sorted(self.paths)

    def plugins(self) -> list[str]:
        """The names installed packages declare as entry points (their modules not imported)."""
        return sorted(set(entry_points(self.kind)) - set(self.paths))

    def check(self, name: str) -> None:
        """Raise the ConfigError of get_class if `name` names no class: without importing
        anything for a built-in or entry-point name, importing the module of an import string."""
        points = entry_points(self.kind)
        if name in self.paths and name in points:
            point = points[name]
            where = f"package {point.dist.name}" if point.dist else "an installed package"
            raise ConfigError(
                f"{where} declares the {self.kind} {name!r} (entry point {point.value}, group "
                f"pgbench.{self.kind}s), a built-in {self.kind} name; rename its entry point"
            )
        if name not in self.paths and name.partition("@")[0] not in points:
            self.get_class(name)

    def modules(self) -> list[str]:
        """The modules that define the registered classes."""
        return sorted({path.partition(":")[0] for path in self.paths.values()})

    def package_attribute(self, package: str, name: str, base: tuple[str, ...]) -> Any:
        """A component package's lazy attribute (its module `__getattr__`): one of `base`
        (REGISTRY, get, the base classes) from `<package>.base`, every registered module
        imported first so that each has registered itself; or a module of the package."""
        if name in base:
            for module in self.modules():
                importlib.import_module(module)
            return getattr(importlib.import_module(f"{package}.base"), name)
        if f"{package}.{name}" in self.modules():
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def get_class(self, name: str) -> type[T]:
        """The class `name` stands for (its module imported now), or a ConfigError."""
        if name in self.paths:
            self.check(name)
            module, _, attribute = self.paths[name].partition(":")
            cls: type[T] = getattr(importlib.import_module(module), attribute)
            return cls
        found = plugin_class(self.kind, name)
        if found is None:
            raise unknown_name(self.kind, name, self.names())
        if self.base and not issubclass(found, import_object(self.base, self.kind)):
            expected = self.base.replace(":", ".")
            raise ConfigError(
                f"{self.kind}={name}: {found.__module__}.{found.__qualname__} does not derive "
                f"from {expected}"
            )
        return found

    def run_name(self, name: str) -> str:
        """The path-safe name `name`'s class runs under (run folders, MLflow, suite columns)."""
        if name in self.paths:
            return name
        cls: Any = self.get_class(name)
        return str(cls.name)

    def saved(self, cls: type) -> str:
        """How a saved config names `cls`, so that it resolves again (saved_name)."""
        return saved_name(self.kind, cls)
