"""The contract every registered method and target keeps, built-in or third-party."""

import dataclasses
import inspect

import pytest

from optc.api import Method, Target
from optc.registry import load_registry

REG = load_registry()


def test_builtins_register_through_entry_points():
    assert {"lowrank"} <= set(REG.methods)
    assert {"cpu", "vulkan"} <= set(REG.targets)
    assert REG.plugin_of["method:lowrank"] == "lowrank"


@pytest.mark.parametrize("name", sorted(REG.methods))
def test_method_contract(name):
    m = REG.methods[name]
    assert isinstance(m, Method) and m.name == name and name.isidentifier()
    assert m.summary and "\n" not in m.summary
    opts = m.Options()  # defaults construct
    for f in dataclasses.fields(opts):
        assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
    assert inspect.getdoc(inspect.getmodule(type(m))), f"module of {name} has no docstring"


@pytest.mark.parametrize("name", sorted(REG.targets))
def test_target_contract(name):
    t = REG.targets[name]
    assert isinstance(t, Target) and t.name == name
    assert t.summary
    opts = t.Options()
    for f in dataclasses.fields(opts):
        assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
    ok, reason = t.available()
    assert isinstance(ok, bool) and (ok or reason)


def test_misspelled_hook_fails_loudly():
    import pluggy

    from optc import hookspecs
    from optc.hookspecs import hookimpl

    class Bad:
        @hookimpl
        def optc_register_method(self, register):  # missing "s"
            pass

    pm = pluggy.PluginManager("optc")
    pm.add_hookspecs(hookspecs)
    pm.register(Bad())
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()
