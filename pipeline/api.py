"""What a plugin implements: a compression :class:`Method` or a compile :class:`Target`.

A method's options are a typed dataclass; every field carries a ``help`` text in
its metadata and a default, and the CLI sets fields with ``--opt NAME.FIELD=VALUE``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence

from optc.errors import OptionError, UnknownNameError

if TYPE_CHECKING:
    import numpy as np

    from optc.calibration import Calibration
    from optc.program import Program


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A documented dataclass field for an ``Options`` class."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class NoOptions:
    """A method or target without options."""


@dataclass
class LayerChange:
    """What a method did to one layer (a weight parameter, by its FQN)."""

    layer: str
    action: str  # e.g. "factorized rank 16", "skipped: would not reduce FLOPs"
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodResult:
    """What a method changed.

    ``reference_weights`` maps each original layer (parameter FQN of the PyTorch
    model) the method changed to the dense array, in that parameter's layout,
    that the compressed program now computes with (e.g. U·V for a low-rank
    factorization). optc loads these into the PyTorch model to build the
    *compressed reference*, which the compiled artifact must reproduce. Methods
    run in order and a later entry for the same layer replaces an earlier one, so
    a method that rewrites an already-rewritten layer reports its whole effective
    weight.
    """

    method: str
    changes: list[LayerChange] = field(default_factory=list)
    reference_weights: dict[str, "np.ndarray"] = field(default_factory=dict)


@dataclass
class MethodContext:
    """What the pipeline hands every method besides the program."""

    calibration: "Calibration | None" = None  # from --calib: per-layer input statistics
    dump_dir: Path | None = None


class LayerStructure(Protocol):
    """The sparsity a method imposed on one layer, published in
    ``Program.structures[layer]`` so a later method (admm) can re-solve the
    weights inside it. Matrices are out×in (``WeightedOp.matrix``)."""

    method: str
    matrix: "np.ndarray"  # the dense out×in weights the structure was chosen on

    def to_param(self, matrix: "np.ndarray") -> "np.ndarray":
        """An out×in matrix in the original parameter's layout (for reference weights)."""

    def mask(self) -> "np.ndarray":
        """Boolean out×in: which weights the structure keeps."""

    def store(self, program: "Program", matrix: "np.ndarray", quantized: Any = None) -> str:
        """Write new weights (zero outside the mask) into the rewritten program;
        ``quantized`` (an ``optc.quant.Quantized`` of ``matrix``) stores them
        narrow. Returns how they are stored (e.g. "float32", "int8")."""


class Method:
    """A compression method: a rewrite of the program's linalg ops and parameters."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    needs_calibration: ClassVar[bool] = False

    def apply(self, program: "Program", options: Any, ctx: MethodContext) -> MethodResult:
        raise NotImplementedError


@dataclass
class Artifact:
    """A compiled module for one target."""

    target: str
    vmfb: bytes
    options: Any
    compile_seconds: float
    flags_used: str | None = None  # which flag set built it, when a target falls back (cpu: "fast", "safe (…)")


class Session:
    """A loaded artifact on a device: call it with numpy arrays, get numpy arrays."""

    def __call__(self, *inputs: "np.ndarray") -> list["np.ndarray"]:
        raise NotImplementedError


class Target:
    """A compile target: turns a program into an artifact and runs it."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def available(self) -> tuple[bool, str]:
        """(True, "") when the target can compile and run here, else (False, reason)."""
        return True, ""

    def runs_here(self, options: Any) -> tuple[bool, str]:
        """Whether an artifact built with ``options`` runs correctly on this machine's
        device (a mobile-GPU profile does not run on a desktop or CPU Vulkan driver)."""
        return True, ""

    def portable_options(self, options: Any) -> Any:
        """Options for an artifact of the same program that runs here, used to verify
        the numbers when ``runs_here(options)`` is false."""
        return options

    def compile(self, program: "Program", options: Any) -> Artifact:
        raise NotImplementedError

    def open(self, artifact_vmfb: bytes, options: Any) -> Session:
        raise NotImplementedError


# --------------------------------------------------------------------------- options


def layer_selected(layer: str, layers: Sequence[str], skip: Sequence[str]) -> bool:
    """A method's ``layers``/``skip`` fnmatch patterns: in ``layers`` (all when empty) and not in ``skip``."""
    if layers and not any(fnmatch.fnmatchcase(layer, p) for p in layers):
        return False
    return not any(fnmatch.fnmatchcase(layer, p) for p in skip)


def option_fields(options_cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(options_cls))


def describe_options(options_cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each field, for listings and docs."""
    hints = typing.get_type_hints(options_cls)
    return [
        (f.name, _type_name(hints[f.name]), f.default, f.metadata.get("help", ""))
        for f in option_fields(options_cls)
    ]


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + "|".join(map(str, typing.get_args(tp)))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_FLOAT_RE = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")


def _convert(owner: str, fname: str, tp: Any, raw: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(owner, fname, inner[0], raw)
    if origin is tuple:
        item = args[0] if args else str
        return tuple(_convert(owner, fname, item, p.strip()) for p in raw.split(",") if p.strip())
    if origin is typing.Literal:
        if raw not in args:
            raise OptionError(f"{owner}.{fname}={raw!r}: allowed values are {', '.join(map(str, args))}")
        return raw
    if tp is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise OptionError(f"{owner}.{fname}={raw!r}: expected a boolean (true/false)")
    if tp is int and not _INT_RE.match(raw):  # int() also takes "１６", "٣٢", "1_6"
        raise OptionError(f"{owner}.{fname}={raw!r}: expected int (ASCII digits, e.g. 16)")
    if tp is float and not _FLOAT_RE.match(raw):  # float() also takes "inf", "nan", "1_0"
        raise OptionError(f"{owner}.{fname}={raw!r}: expected a finite float (e.g. 0.5, 1e-3)")
    if tp in (int, float, str):
        try:
            value = tp(raw)
        except ValueError:
            raise OptionError(f"{owner}.{fname}={raw!r}: expected {tp.__name__}") from None
        if tp is float and not math.isfinite(value):
            raise OptionError(f"{owner}.{fname}={raw!r}: expected a finite float (e.g. 0.5, 1e-3)")
        return value
    raise TypeError(f"unsupported option type {tp!r} for {owner}.{fname}")


def build_options(owner: str, options_cls: type, assignments: dict[str, str]) -> Any:
    """Construct ``options_cls`` from ``{field: raw string}``, validating names and values.

    A dataclass may define ``validate(self)`` raising ``ValueError`` with a message
    that says what is allowed; it becomes an :class:`OptionError`.
    """
    hints = typing.get_type_hints(options_cls)
    known = {f.name for f in option_fields(options_cls)}
    values: dict[str, Any] = {}
    for key, raw in assignments.items():
        if key not in known:
            allowed = ", ".join(sorted(known)) or "(none)"
            raise UnknownNameError(f"unknown option {owner}.{key}; {owner} options are: {allowed}")
        values[key] = _convert(owner, key, hints[key], raw)
    opts = options_cls(**values)
    validate = getattr(opts, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as e:
            raise OptionError(f"{owner}: {e}") from None
    return opts


def parse_assignments(pairs: Sequence[str], flag: str) -> dict[str, dict[str, str]]:
    """``["lowrank.rank=16", ...]`` -> ``{"lowrank": {"rank": "16"}}``."""
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        owner, dot, fname = key.partition(".")
        if not sep or not dot or not owner or not fname:
            raise OptionError(f"{flag} {pair!r}: expected NAME.FIELD=VALUE, e.g. {flag} lowrank.rank=16")
        if fname in out.get(owner, {}):
            raise OptionError(f"{flag} {key}: given twice ({out[owner][fname]!r} and {value!r}); give it once")
        out.setdefault(owner, {})[fname] = value
    return out
