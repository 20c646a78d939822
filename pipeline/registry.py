"""The plugin manager: every method and target, built-in or third-party, comes
through the ``optc`` entry-point group and registers through the hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import pluggy

from optc import hookspecs
from optc.api import Method, Target
from optc.errors import UnknownNameError


@dataclass
class Registry:
    methods: dict[str, Method] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    plugin_of: dict[str, str] = field(default_factory=dict)  # "method:NAME" -> plugin module

    def method(self, name: str) -> Method:
        if name not in self.methods:
            raise UnknownNameError(
                f"unknown method {name!r}; installed methods: {', '.join(sorted(self.methods)) or '(none)'}"
            )
        return self.methods[name]

    def target(self, name: str) -> Target:
        if name not in self.targets:
            raise UnknownNameError(
                f"unknown target {name!r}; installed targets: {', '.join(sorted(self.targets)) or '(none)'}"
            )
        return self.targets[name]


def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("optc")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints("optc")
    pm.check_pending()  # a misspelled hook implementation fails loudly
    return pm


def _register_into(table: dict, kind: str, base: type, registry: Registry, plugin: str):
    def register(obj: object) -> None:
        if not isinstance(obj, base):
            raise TypeError(f"plugin {plugin} registered {obj!r}, which is not a {base.__name__}")
        if obj.name in table:
            raise ValueError(f"{kind} {obj.name!r} registered twice (by {registry.plugin_of[kind + ':' + obj.name]} and {plugin})")
        table[obj.name] = obj
        registry.plugin_of[f"{kind}:{obj.name}"] = plugin

    return register


@lru_cache(maxsize=1)
def load_registry() -> Registry:
    """All installed methods and targets (cached for the process)."""
    pm = plugin_manager()
    reg = Registry()
    for plugin in pm.get_plugins():
        pname = pm.get_name(plugin) or repr(plugin)
        # Call each plugin's hooks separately so registrations know their plugin.
        for hook, table, kind, base in (
            ("optc_register_methods", reg.methods, "method", Method),
            ("optc_register_targets", reg.targets, "target", Target),
        ):
            caller = pm.subset_hook_caller(hook, remove_plugins=[p for p in pm.get_plugins() if p is not plugin])
            caller(register=_register_into(table, kind, base, reg, pname))
    return reg
