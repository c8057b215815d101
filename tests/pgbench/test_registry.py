import json
from dataclasses import dataclass

import pytest

from pgbench import estimators, tasks
from pgbench.errors import ConfigError
from pgbench.fields import knob
from pgbench.registry import Catalog, Registry


def widgets() -> Registry:
    registry = Registry("widget")

    @registry.register("round")
    @dataclass(frozen=True)
    class Round:
        size: int = knob(1, "size", ge=1)

    @registry.register("flat")
    @dataclass(frozen=True)
    class Flat:
        pass

    return registry


def test_classes_are_found_by_name_and_built_checked():
    registry = widgets()
    assert registry.names() == ["flat", "round"]
    assert registry.get_class("round").name == "round"
    assert registry.get("round", size="4").size == 4
    with pytest.raises(ConfigError, match=r"^widget.size must be >= 1 \(got 0\)"):
        registry.get("round", size="0")
    with pytest.raises(ConfigError, match="^unknown key widget.size"):
        registry.get("flat", size="1")


def test_unknown_and_duplicate_names_are_refused():
    registry = widgets()
    with pytest.raises(ConfigError, match="^unknown widget 'square'; registered: flat, round$"):
        registry.get_class("square")
    with pytest.raises(ValueError, match="widget 'round' is already registered"):
        registry.register("round")(type("Other", (), {}))


def test_a_catalog_names_and_checks_without_importing_then_imports_on_demand():
    catalog = Catalog("widget", {"json": "json:JSONDecoder", "csv": "csv:DictReader"})
    assert catalog.names() == ["csv", "json"] and catalog.modules() == ["csv", "json"]
    catalog.check("json")
    with pytest.raises(ConfigError, match="^unknown widget 'xml'; registered: csv, json$"):
        catalog.check("xml")
    with pytest.raises(ConfigError, match="^unknown widget 'xml'"):
        catalog.get_class("xml")
    assert catalog.get_class("json") is json.JSONDecoder


@pytest.mark.parametrize("package", [estimators, tasks])
def test_the_catalogs_name_exactly_the_registered_classes(package):
    registry = package.REGISTRY  # every module imported, so every class registered
    assert package.CATALOG.names() == registry.names()
    for name in registry.names():
        assert package.CATALOG.get_class(name) is registry.get_class(name)
