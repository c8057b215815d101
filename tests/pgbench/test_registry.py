import importlib.metadata
import json
import sys
from dataclasses import dataclass

import pytest

from pgbench import estimators, registry, tasks
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


def test_import_object_finds_an_attribute_and_names_each_bad_form(tmp_path, monkeypatch):
    from pgbench.registry import import_object

    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('missing dependency x')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_object("json:dumps", "task.reward") is json.dumps
    cases = {
        "json": "task.reward='json' is not an import string; use pkg.module:Name",
        "json:nope": "task.reward=json:nope: module 'json' has no 'nope'",
        "broken_plugin:f": "task.reward=broken_plugin:f: module 'broken_plugin' does not import "
        "(RuntimeError: missing dependency x)",
    }
    for spec, message in cases.items():
        with pytest.raises(ConfigError) as err:
            import_object(spec, "task.reward")
        assert str(err.value) == message


PLUGIN = """
from dataclasses import dataclass

from pgbench.estimators import Estimator


@dataclass(frozen=True)
class Half(Estimator):
    def advantages(self, rewards, state=None):
        return rewards / 2


class NotAnEstimator:
    pass


def score(prompts, completions):
    return [1.0 for _ in completions]
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A user's module `myplug` on sys.path, outside any installed package."""
    (tmp_path / "myplug.py").write_text(PLUGIN)
    (tmp_path / "brokenplug.py").write_text("raise ImportError('no module named zzz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("myplug", "brokenplug"):  # imported afresh by each test
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def fake_entry_points(monkeypatch, **points: str) -> None:
    """Entry points of the group pgbench.estimators, as an installed package would declare."""
    found = {
        name: importlib.metadata.EntryPoint(name, value, "pgbench.estimators")
        for name, value in points.items()
    }
    monkeypatch.setattr(registry, "entry_points", lambda kind: found if kind == "estimator" else {})


def test_an_import_string_gives_a_class_that_runs_under_a_path_safe_name(plugin):
    catalog = estimators.CATALOG
    half = catalog.get_class("myplug:Half")
    assert half.__module__ == "myplug" and half.name == "myplug.Half"  # no ':' nor '/'
    assert catalog.run_name("myplug:Half") == "myplug.Half" and catalog.run_name("rloo") == "rloo"
    # the run name resolves again (a suite's cells, reports), and so does the registry
    assert catalog.get_class("myplug.Half") is half
    assert estimators.REGISTRY.get_class("myplug.Half") is half
    assert estimators.get("myplug:Half").advantages(4.0) == 2.0
    assert catalog.saved(half) == "myplug:Half"  # no installed package: no @version
    assert catalog.saved(catalog.get_class("rloo")) == "rloo"
    assert "myplug.Half" not in estimators.REGISTRY.names()  # the built-ins' table is unchanged


def test_each_bad_plugin_is_one_line_naming_it(plugin, monkeypatch):
    catalog = estimators.CATALOG
    cases = {
        "brokenplug:Half": "estimator=brokenplug:Half: module 'brokenplug' does not import "
        "(ImportError: no module named zzz)",
        "myplug:Nope": "estimator=myplug:Nope: module 'myplug' has no 'Nope'",
        "myplug:NotAnEstimator": "estimator=myplug:NotAnEstimator: myplug.NotAnEstimator does "
        "not derive from pgbench.estimators.base.Estimator",
        "myplug:score": "estimator=myplug:score names a function, not a class",
        "rloo2": "unknown estimator 'rloo2'; registered: " + ", ".join(catalog.names()),
    }
    for name, message in cases.items():
        with pytest.raises(ConfigError) as err:
            catalog.check(name)
        assert str(err.value) == message
    fake_entry_points(monkeypatch, rloo="myplug:Half")
    with pytest.raises(ConfigError) as err:
        catalog.check("rloo")
    assert str(err.value) == (
        "an installed package declares the estimator 'rloo' (entry point myplug:Half, group "
        "pgbench.estimators), a built-in estimator name; rename its entry point"
    )


def test_an_entry_point_is_checked_and_listed_without_importing_its_module(plugin, monkeypatch):
    catalog = estimators.CATALOG
    fake_entry_points(monkeypatch, halve="myplug:Half")
    assert catalog.plugins() == ["halve"]
    catalog.check("halve")
    assert "myplug" not in sys.modules
    half = catalog.get_class("halve")
    assert half.name == "halve" and catalog.saved(half) == "halve"
    assert estimators.REGISTRY.get_class("halve") is half


def test_plugin_fingerprint_hashes_the_source_of_code_outside_pgbench(plugin):
    import myplug

    from pgbench.registry import plugin_fingerprint

    assert plugin_fingerprint(estimators.CATALOG.get_class("rloo")) == ""  # pgbench's own
    before = plugin_fingerprint(myplug.score)
    assert len(before) == 24 and plugin_fingerprint(myplug.Half) == before  # the same file
    (plugin / "myplug.py").write_text(PLUGIN + "\n# edited\n")
    assert plugin_fingerprint(myplug.score) != before
