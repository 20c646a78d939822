"""The hooks a plugin may implement (pluggy project name ``optc``).

Hooks only *register* things. Pluggy calls implementations last-registered
first, so nothing may depend on hook order.
"""

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("optc")
hookimpl = pluggy.HookimplMarker("optc")


@hookspec
def optc_register_methods(register: Callable[[object], None]) -> None:
    """Called once when the registry loads: call ``register(method)`` for each
    compression method (an instance of :class:`optc.api.Method`)."""


@hookspec
def optc_register_targets(register: Callable[[object], None]) -> None:
    """Called once when the registry loads: call ``register(target)`` for each
    compile target (an instance of :class:`optc.api.Target`)."""
