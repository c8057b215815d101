"""Name -> class registries for estimators and tasks (a dict filled by a decorator)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pgbench.errors import ConfigError
from pgbench.fields import build

T = TypeVar("T")


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
            cls.name = name
            self.classes[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self.classes)

    def get_class(self, name: str) -> type[T]:
        """The class registered as `name`, or a ConfigError listing the valid names."""
        if name not in self.classes:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}"
            )
        return self.classes[name]

    def get(self, name: str, **fields: Any) -> T:
        """Build the `name` component from fields by key (values or `key=value` text), checked."""
        return build(self.get_class(name), f"{self.kind}.", fields)
