"""Name -> class tables of components (estimators, tasks): a dict filled by a decorator, and a
catalog of the registered names that knows them without importing a module."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from pgbench.errors import ConfigError
from pgbench.fields import build

T = TypeVar("T")


def unknown_name(kind: str, name: str, names: list[str]) -> ConfigError:
    """The error for a name nothing is registered under, listing the registered ones."""
    return ConfigError(f"unknown {kind} {name!r}; registered: {', '.join(names)}")


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
        """The class registered as `name`, or a ConfigError listing the valid names."""
        if name not in self.classes:
            raise unknown_name(self.kind, name, self.names())
        return self.classes[name]

    def get(self, name: str, **fields: Any) -> T:
        """Build the `name` component from fields by key (values or `key=value` text), checked."""
        return build(self.get_class(name), f"{self.kind}.", fields)


class Catalog(Generic[T]):
    """The registered names of one kind of component, each with the `module:Class` that defines
    it (`"rloo": "pgbench.estimators.rloo:RLOO"`): names are listed and checked without importing
    anything, and a class is imported only when it is asked for (its module registers it)."""

    def __init__(self, kind: str, paths: Mapping[str, str]) -> None:
        self.kind = kind
        self.paths = dict(paths)

    def names(self) -> list[str]:
        return sorted(self.paths)

    def check(self, name: str) -> None:
        """Raise the ConfigError of Registry.get_class if nothing is registered as `name`."""
        if name not in self.paths:
            raise unknown_name(self.kind, name, self.names())

    def modules(self) -> list[str]:
        """The modules that define the registered classes."""
        return sorted({path.partition(":")[0] for path in self.paths.values()})

    def get_class(self, name: str) -> type[T]:
        """The class registered as `name` (its module imported now), or a ConfigError."""
        self.check(name)
        module, _, attribute = self.paths[name].partition(":")
        cls: type[T] = getattr(importlib.import_module(module), attribute)
        return cls
