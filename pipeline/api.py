"""What a plugin implements: a compression :class:`Method` or a compile :class:`Target`.

A method's options are a typed dataclass; every field carries a ``help`` text in
its metadata and a default, and the CLI sets fields with ``--opt NAME.FIELD=VALUE``.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from optc.errors import OptionError, UnknownNameError

if TYPE_CHECKING:
    import numpy as np

    import torch

    from optc.calibration import Calibration, Samples
    from optc.load import Model
    from optc.program import Layer, LayerRewriter, Program
    from optc.storage import Layout
    from optc.structures import Structure


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A documented dataclass field for an ``Options`` class."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class NoOptions:
    """A method or target without options."""


class Status(enum.StrEnum):
    """Whether a method changed a layer."""

    CHANGED = "changed"
    SKIPPED = "skipped"


class SkipReason(enum.Enum):
    """Why a method left a layer as it was (``Skip.reason``; the report's ``reason``)."""

    NOT_SELECTED = "not selected by the method's layers/skip options"
    ALREADY_REWRITTEN = "already rewritten by an earlier method"
    NO_MATRIX_VIEW = "its weight has no out×in matrix view"
    MIXED_VIEWS = "its uses read the weight through different views"
    UNSUPPORTED = "an op kind the method does not rewrite"
    DOES_NOT_FIT = "the method's settings do not fit the layer's shape"
    NOT_PROFITABLE = "the rewrite would not make it cheaper"
    NOTHING_TO_DO = "nothing to change"


@dataclass(frozen=True)
class Skip:
    """A layer a method leaves alone: a typed ``reason`` plus the specifics."""

    reason: SkipReason
    detail: str = ""
    details: dict[str, Any] = field(default_factory=dict, compare=False)  # for the report

    def __str__(self) -> str:
        return self.detail or self.reason.value


@dataclass
class LayerChange:
    """What a method did to one layer (a weight parameter, by its FQN): ``status``
    says whether it changed, ``reason`` why not; ``action`` is the line for people."""

    layer: str
    action: str  # e.g. "factorized rank 16", "skipped: rank 8 would not reduce FLOPs"
    details: dict[str, Any] = field(default_factory=dict)
    status: Status = Status.CHANGED
    reason: SkipReason | None = None

    def __post_init__(self) -> None:
        # the report counts by status, not by the words of the action
        if self.status == Status.CHANGED and self.action.lstrip().lower().startswith("skipped"):
            raise ValueError(f"LayerChange({self.layer!r}, {self.action!r}) says skipped but its status is CHANGED: "
                             "build it with LayerChange.skipped(layer, Skip(reason, detail))")

    @classmethod
    def skipped(cls, layer: str, skip: Skip) -> "LayerChange":
        return cls(layer, f"skipped: {skip}", dict(skip.details), Status.SKIPPED, skip.reason)

    @property
    def changed(self) -> bool:
        return self.status == Status.CHANGED

    def as_dict(self) -> dict[str, Any]:
        """The report's form: status "changed"/"skipped", reason e.g. "does_not_fit" or None."""
        reason = self.reason.name.lower() if self.reason is not None else None
        return {"layer": self.layer, "action": self.action, "status": str(self.status), "reason": reason, "details": self.details}


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
    # A method whose program decides at run time (drnet) is not the model with other
    # weights: it gives its host re-implementation instead, built from the merged
    # reference weights; optc verifies the artifact and evaluates against it.
    reference_model: "Callable[[dict[str, np.ndarray]], torch.nn.Module] | None" = None
    # Extra numbers on the --eval samples for the report's accuracy section (keyed by the method's name).
    evaluate: "Callable[[Samples], dict[str, Any]] | None" = None


def _quiet(message: str) -> None:
    pass


@dataclass
class MethodContext:
    """What the pipeline hands every method besides the program."""

    calibration: "Calibration | None" = None  # from --calib: per-layer input statistics
    dump_dir: Path | None = None
    progress: Callable[[str], None] = _quiet  # one short line per step (a terminal shows the latest)
    model: "Model | None" = None  # the loaded PyTorch model, for methods that re-lower it at other shapes


@dataclass
class LayerStructure:
    """The structure a method imposed on one layer, published in
    ``Program.structures[layer]`` so a later method (admm) can re-solve the
    weights inside it: the shared :mod:`optc.structures` object, the dense
    out×in weights it was chosen on, and where the program stores the weights
    in that structure's layout (``param``, laid out by ``layout``)."""

    method: str
    structure: "Structure"
    matrix: "np.ndarray"
    param: str
    layout: "Layout"
    to_param: Callable[["np.ndarray"], "np.ndarray"]  # out×in -> the original parameter's layout

    def mask(self) -> "np.ndarray":
        return self.structure.mask()


class Method:
    """A compression method: a rewrite of the program's linalg ops and parameters.
    Most methods rewrite layer by layer: derive from :class:`optc.driver.LayerMethod`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    needs_calibration: ClassVar[bool] = False

    def apply(self, program: "Program", options: Any, ctx: MethodContext) -> MethodResult:
        raise NotImplementedError


class Plan:
    """What a method will do to one layer. ``action`` (one line) and ``details``
    go into the report; every other keyword is kept as an attribute for ``rewrite``."""

    def __init__(self, action: str, details: dict[str, Any] | None = None, **data: Any):
        self.action = action
        self.details = dict(details or {})
        self.__dict__.update(data)


@dataclass
class SelectionOptions:
    """The options every per-layer method shares: which layers, and per-layer
    settings. A method's ``Options`` derives from it and lists the fields a
    user may set per layer in ``OVERRIDABLE``; its ``validate`` calls
    ``super().validate()``."""

    OVERRIDABLE: ClassVar[tuple[str, ...]] = ()

    layers: tuple[str, ...] = option((), "only these layers (comma-separated fnmatch patterns on parameter names); empty = all")
    skip: tuple[str, ...] = option((), "never these layers (comma-separated fnmatch patterns)")
    override: tuple[str, ...] = option((), "per-layer settings PATTERN:KEY=V[:KEY=V], later entries win")

    def validate(self) -> None:
        self.overrides()

    def selects(self, layer: str) -> bool:
        return layer_selected(layer, self.layers, self.skip)

    def names(self, layer: str) -> bool:
        """Whether the user named ``layer`` explicitly (a ``layers`` or ``override`` pattern matches it)."""
        return any(fnmatch.fnmatchcase(layer, p) for p in (*self.layers, *(p for p, _ in self.overrides())))

    def overrides(self) -> list[tuple[str, dict[str, Any]]]:
        """The parsed ``override`` entries, in order (later entries win); each one's
        settings are validated as the method's options."""
        hints = typing.get_type_hints(type(self))
        parsed = []
        for entry in self.override:
            pattern, *pairs = entry.split(":")
            if not pattern or not pairs:
                raise ValueError(f"override={entry!r}: expected PATTERN:KEY=V[:KEY=V], e.g. {pattern or 'fc2.weight'}:{(self.OVERRIDABLE or ('KEY',))[0]}=V")
            values: dict[str, Any] = {}
            for pair in pairs:
                key, _, raw = pair.partition("=")
                if key not in self.OVERRIDABLE:
                    raise ValueError(f"override={entry!r}: unknown key {key!r}; allowed: {', '.join(self.OVERRIDABLE) or '(none)'}")
                try:
                    values[key] = _convert("override", key, hints[key], raw)
                except OptionError as e:
                    raise ValueError(f"override={entry!r}: {e}") from None
            try:
                dataclasses.replace(self, override=(), **values).validate()
            except ValueError as e:
                raise ValueError(f"override {pattern}: {e}") from None
            parsed.append((pattern, values))
        return parsed

    def for_layer(self, layer: str) -> Any:
        """These options with ``layer``'s overrides applied."""
        values: dict[str, Any] = {}
        for pattern, override in self.overrides():
            if fnmatch.fnmatchcase(layer, pattern):
                values.update(override)
        return dataclasses.replace(self, **values) if values else self


class LayerMethod(Method):
    """A method that rewrites layer by layer; the driver in :meth:`apply` does the rest.

    For every layer (``Program.layers``, in program order) the driver records
    one :class:`LayerChange`: layers the ``layers``/``skip`` options exclude,
    layers ``admissible`` refuses and layers ``plan`` answers with a
    :class:`Skip` are reported skipped with their reason; the others are
    rewritten by ``rewrite``, which returns the layer's effective weight (in
    the parameter's layout) for the compressed reference. A ``Skip`` with
    reason DOES_NOT_FIT is an error instead when the user named the layer
    (``layers``/``override``). Plans are made for all layers first (progress
    is reported per layer), then rewritten; a method that plans across layers
    overrides ``plan_layers``.

    In a module holding several variants of the model chosen at run time
    (drnet's resolutions: ``Program.variants``), a layer is planned once, on
    the variant with the most MACs, and that one plan rewrites the layer's copy
    in every variant (the same kept rows and columns; equal new constants are
    stored once), so the savings hold whichever variant runs.
    """

    Options: ClassVar[type] = SelectionOptions
    needs_matrix: ClassVar[bool] = True  # only layers with an out×in matrix view (``Layer.matrix``)

    def start(self, program: "Program", options: Any, ctx: MethodContext) -> None:
        """Checks and setup before any layer (raise ``OptionError`` for bad combinations)."""

    def admissible(self, layer: "Layer") -> Skip | None:
        """Why this method cannot rewrite ``layer`` at all, or None."""
        if self.needs_matrix:
            return layer.problem
        return Skip(SkipReason.ALREADY_REWRITTEN) if layer.rewritten else None

    def plan(self, layer: "Layer", options: Any, ctx: MethodContext) -> Plan | Skip:
        raise NotImplementedError

    def plan_layers(self, layers: list["Layer"], options: Any, ctx: MethodContext) -> list[Plan | Skip]:
        """A plan per layer (``options.for_layer`` applied); progress per layer."""
        plans = []
        for i, layer in enumerate(layers):
            ctx.progress(f"{self.name}: layer {i + 1}/{len(layers)} {layer.name}")
            plans.append(self.plan(layer, options.for_layer(layer.name), ctx))
        return plans

    def rewrite(self, layer: "Layer", plan: Plan, rewriter: "LayerRewriter") -> "np.ndarray":
        raise NotImplementedError

    def apply(self, program: "Program", options: Any, ctx: MethodContext) -> MethodResult:
        self.start(program, options, ctx)
        result = MethodResult(self.name)
        verdicts: dict[str, LayerChange | None] = {}
        candidates = []
        variants = program.variants()
        primary = max(variants, key=lambda v: v.contraction_macs())  # as the report's per-layer rows
        copies = [{layer.name: layer for layer in v.layers()} for v in variants if v is not primary]
        for layer in primary.layers():
            refusal = Skip(SkipReason.NOT_SELECTED) if not options.selects(layer.name) else self.admissible(layer)
            verdicts[layer.name] = LayerChange.skipped(layer.name, refusal) if refusal else None
            if refusal is None:
                candidates.append(layer)
        for layer, plan in zip(candidates, self.plan_layers(candidates, options, ctx)):
            if isinstance(plan, Skip):
                if plan.reason is SkipReason.DOES_NOT_FIT and options.names(layer.name):
                    raise OptionError(f"{self.name}: {plan.detail}")
                verdicts[layer.name] = LayerChange.skipped(layer.name, plan)
                continue
            from optc.program import LayerRewriter

            planned_on = primary.structures.get(layer.name)  # shared by the variants; a rewrite may update it

            def fresh_structure() -> None:
                if planned_on is not None:
                    primary.structures[layer.name] = dataclasses.replace(planned_on)

            for view, copy in [(v[layer.name].program, v[layer.name]) for v in copies if layer.name in v]:
                fresh_structure()
                self.rewrite(copy, plan, LayerRewriter(view, copy, self.name))
            fresh_structure()
            rewriter = LayerRewriter(primary, layer, self.name)
            result.reference_weights[layer.name] = self.rewrite(layer, plan, rewriter)
            rewriter.publish_structure()  # after every copy: they see the structure the plan was made on
            verdicts[layer.name] = LayerChange(layer.name, plan.action, plan.details)
        result.changes = [c for c in verdicts.values() if c is not None]
        return result


@dataclass
class Artifact:
    """A compiled module for one target."""

    target: str
    vmfb: bytes
    options: Any
    compile_seconds: float
    flags_used: str | None = None  # which flag set built it, when a target falls back (cpu: "fast", "safe (…)")
    extra_report: dict[str, Any] = field(default_factory=dict)  # sections the target adds to the compile report (sim: "simulation")


class Session:
    """A loaded artifact on a device: call it with numpy arrays, get numpy arrays."""

    def __call__(self, *inputs: "np.ndarray") -> list["np.ndarray"]:
        raise NotImplementedError

    def entry(self, name: str) -> Callable[..., list["np.ndarray"]]:
        """Another function the loaded module exports, called like the session."""
        raise NotImplementedError(f"{type(self).__name__} calls only its module's main function")

    def resident(self, arrays: Sequence["np.ndarray"]) -> list[Any]:
        """``arrays`` placed on the device once, to pass to many calls in their
        place (a calibration probe's weights); by default the arrays themselves."""
        return list(arrays)


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

    def supports(self, program: "Program", options: Any) -> tuple[bool, str]:
        """(True, "") when ``program`` compiles correctly with ``options``, else
        (False, what capability is missing) — checked before compiling."""
        return True, ""

    def portable_options(self, options: Any) -> Any:
        """Options for an artifact of the same program that runs here, used to verify
        the numbers when ``runs_here(options)`` is false."""
        return options

    def resolve_options(self, program: "Program", options: Any) -> Any:
        """``options`` with any choice left to the target (an ``auto`` value) made for
        ``program``; called before the artifact's metadata is written, so the
        metadata and report record what was chosen."""
        return options

    def compile(self, program: "Program", options: Any) -> Artifact:
        raise NotImplementedError

    def open(self, artifact_vmfb: bytes, options: Any) -> Session:
        raise NotImplementedError


# --------------------------------------------------------------------------- options


def activation_scores(method: str, score: str, ctx: MethodContext) -> bool:
    """Whether a method's ``score`` option (auto|magnitude|activation) weights
    importance by the layer's input activations: auto means when --calib was given;
    activation without --calib is an error."""
    if score == "activation" and ctx.calibration is None:
        raise OptionError(f"{method}.score=activation needs calibration data: pass --calib data.npz")
    return ctx.calibration is not None and score != "magnitude"


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
    shared = {f.name for f in dataclasses.fields(SelectionOptions)}
    fields = sorted(option_fields(options_cls), key=lambda f: f.name in shared)  # the method's own first
    keys = getattr(options_cls, "OVERRIDABLE", ())

    def help_of(f: dataclasses.Field) -> str:
        text = f.metadata.get("help", "")
        return f"{text}; KEY in {'|'.join(keys) or '(none)'}" if f.name == "override" else text

    return [(f.name, _type_name(hints[f.name]), f.default, help_of(f)) for f in fields]


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


_OWNER = re.compile(r"[\w-]+")  # a method or target name


def parse_assignments(pairs: Sequence[str], flag: str) -> dict[str, dict[str, str]]:
    """``["lowrank.rank=16", ...]`` -> ``{"lowrank": {"rank": "16"}}``."""
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        owner, dot, fname = key.partition(".")
        # a field is a dataclass field's name: "y.rank" or "rank\n" is a typo, not an option
        if not sep or not dot or not _OWNER.fullmatch(owner) or not fname.isidentifier():
            raise OptionError(f"{flag} {pair!r}: expected NAME.FIELD=VALUE, e.g. {flag} lowrank.rank=16")
        if fname in out.get(owner, {}):
            raise OptionError(f"{flag} {key}: given twice ({out[owner][fname]!r} and {value!r}); give it once")
        out.setdefault(owner, {})[fname] = value
    return out
