"""Sample data for ``--calib`` and ``--eval``, and what methods learn from it.

A sample file is an ``.npz`` of plain arrays (no pickles): ``x`` holds the model
input with the batch dimension first (``x0``, ``x1``, … for several inputs), and
``y`` the integer class labels that ``--eval`` needs.

:class:`Calibration` measures each weighted layer's inputs on the program as
lowered (before any method rewrote it): the compiled program is run on the
calibration samples with every layer input as an extra result, and each layer
keeps the Gram matrix G = E[x·xᵀ] of its input rows (im2col patches for a
convolution), in the column order of ``WeightedOp.matrix``. That is what the
reconstruction objective ‖W·X − Ŵ·X‖² and activation-aware scores need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from torch_mlir import ir
from torch_mlir.dialects import func

from optc.api import MethodContext, Plan, Skip
from optc.errors import InputError, first_line
from optc.program import Layer, Program, WeightedOp


@dataclass
class Samples:
    """Model inputs (batch first) and, for evaluation, labels."""

    path: Path
    inputs: list[np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.inputs[0])

    def batches(self, batch: int) -> Iterator[tuple[list[np.ndarray], int]]:
        """Chunks of exactly ``batch`` samples (the compiled shapes are static);
        the last is padded by repeating its final sample. Yields (inputs, real count)."""
        for start in range(0, len(self), batch):
            chunk = [x[start:start + batch] for x in self.inputs]
            real = len(chunk[0])
            if real < batch:
                chunk = [np.concatenate([c, np.repeat(c[-1:], batch - real, axis=0)]) for c in chunk]
            yield chunk, real


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip


def read_arrays(path: Path, what: str) -> "np.ndarray | dict[str, np.ndarray]":
    """A ``.npy`` array or a ``.npz``'s arrays by name (read in full, in file
    order), never unpickling; or one InputError line starting with ``what`` when
    the file is absent, not a numpy file, damaged, or holds non-numeric arrays."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: file not found" if not path.exists() else f"{what}: not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise InputError(f"{what}: cannot read it ({e.strerror})") from None
    if head != _NPY_MAGIC and head[:4] not in _ZIP_MAGICS:
        raise InputError(f"{what}: not a numpy file (a .npy/.npz written by numpy.save/savez starts with a numpy or zip header)")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return _numeric(loaded, what)
        with loaded:
            return {name: _numeric(loaded[name], f"{what}: array {name!r}") for name in loaded.files}
    except InputError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise InputError(f"{what}: holds Python objects, not plain arrays (optc never unpickles data)") from None
        raise InputError(f"{what}: a damaged .npy/.npz file ({first_line(e)})") from None
    except Exception as e:  # zipfile/numpy raise a dozen types on damaged bytes; all mean the same here
        raise InputError(f"{what}: a damaged or truncated .npy/.npz file ({type(e).__name__}: {first_line(e)})") from None


def _numeric(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise InputError(f"{what}: holds {a.dtype} data; expected numbers (bool, integer or float arrays)")
    return a


def input_arrays(arrays: dict[str, np.ndarray], count: int | None, what: str) -> list[np.ndarray]:
    """The model inputs in a ``.npz`` by their documented names: ``x`` (one
    input), ``x0``, ``x1``, … (a sample file, whose labels ``y`` are ignored) or
    ``arg0``, ``arg1``, … (``count`` of them when known). Unknown or missing
    names are one InputError line."""
    names = list(arrays)
    samples = [k for k in names if k != "y"]  # a --calib/--eval file runs as it is
    for prefix, present in (("x", samples), ("arg", names)):
        n = count if count is not None else len(present)
        want = [f"{prefix}{i}" for i in range(n)]
        if sorted(present) == sorted(want):
            return [arrays[k] for k in want]
    if samples == ["x"] and count in (None, 1):
        return [arrays["x"]]
    n = f"{count} input(s)" if count is not None else "the model's inputs"
    raise InputError(
        f"{what}: arrays must be named x (one input), x0, x1, … or arg0, arg1, … for {n}; "
        f"it has {', '.join(repr(k) for k in names) or 'none'}"
    )


def load_samples(
    path: Path,
    example_inputs: Sequence[np.ndarray],
    flag: str,
    need_labels: bool = False,
    index_ranges: dict[int, tuple[int, int]] | None = None,
) -> Samples:
    """Read and check a sample file against the model's example inputs (and the
    valid ranges of inputs that index tables, from ``lower.input_index_ranges``)."""
    from optc.lower import check_index_ranges

    path = Path(path)
    data = read_arrays(path, f"{flag} {path}")
    if not isinstance(data, dict):
        raise InputError(f"{flag} {path}: expected a .npz with arrays x (inputs) and y (labels)")
    names = ["x"] if len(example_inputs) == 1 else [f"x{i}" for i in range(len(example_inputs))]
    missing = [n for n in names + (["y"] if need_labels else []) if n not in data]
    if missing:
        raise InputError(f"{flag} {path}: missing array(s) {', '.join(missing)}; it has {', '.join(data) or 'none'} (x: inputs, batch first; y: labels)")
    unknown = [n for n in data if n not in names and n != "y"]
    if unknown:
        raise InputError(f"{flag} {path}: unknown array(s) {', '.join(unknown)}; expected {', '.join(names)} (inputs, batch first) and y (labels)")
    inputs = []
    for name, example in zip(names, example_inputs):
        x = data[name]
        want = tuple(example.shape[1:])
        if x.ndim != example.ndim or tuple(x.shape[1:]) != want or len(x) == 0:
            raise InputError(
                f"{flag} {path}: {name} has shape {_fmt(x.shape)} but the model takes (N, {', '.join(map(str, want))}) {example.dtype}"
            )
        if np.issubdtype(example.dtype, np.floating) != np.issubdtype(x.dtype, np.floating):
            raise InputError(f"{flag} {path}: {name} is {x.dtype} but the model takes {example.dtype}")
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.ascontiguousarray(x.astype(example.dtype))
        if np.issubdtype(x.dtype, np.floating):  # after the cast: a float64 beyond float32's range becomes Inf
            finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
            if not finite.all():
                raise InputError(
                    f"{flag} {path}: {name} holds NaN or Inf (first in sample {int(np.argmin(finite))}, "
                    f"after conversion to {example.dtype}); samples must be finite"
                )
        inputs.append(x)
    if len({len(x) for x in inputs}) != 1:
        raise InputError(f"{flag} {path}: the input arrays hold different numbers of samples")
    if index_ranges:
        check_index_ranges(inputs, index_ranges, f"{flag} {path}")
    labels = None
    if "y" in data:
        labels = data["y"]
        if labels.shape != (len(inputs[0]),) or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{flag} {path}: y must be integer labels of shape ({len(inputs[0])},), got {labels.dtype} {_fmt(labels.shape)}")
        if labels.size and labels.min() < 0:
            raise InputError(f"{flag} {path}: y holds a negative label ({int(labels.min())}, first in sample {int(np.argmax(labels < 0))}); labels are class indices >= 0")
    return Samples(path, inputs, labels)


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def top1(predict: Callable[[list[np.ndarray]], np.ndarray], samples: Samples, batch: int) -> float:
    """Top-1 accuracy of ``predict`` (inputs -> logits, batch first) on labelled samples."""
    assert samples.labels is not None
    hits = 0
    classes = None
    done = 0
    for chunk, real in samples.batches(batch):
        logits = np.asarray(predict(chunk)).reshape(batch, -1)[:real]
        if classes is None:
            classes = logits.shape[1]
            bad = np.flatnonzero(samples.labels >= classes)
            if bad.size:
                raise InputError(
                    f"--eval {samples.path}: y holds label {int(samples.labels[bad[0]])} (sample {int(bad[0])}) "
                    f"but the model scores {classes} classes (labels 0..{classes - 1})"
                )
        hits += int((logits.argmax(axis=1) == samples.labels[done:done + real]).sum())
        done += real
    return hits / len(samples)


@dataclass
class _Probe:
    layer: str
    conv: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None  # kernel, strides, dilations
    rows_per_sample: int


@dataclass
class _CompiledProbe:
    run: Callable[..., list[np.ndarray]]  # (model inputs…, weights…) -> (model outputs…, layer inputs…)
    probes: list[_Probe]
    weights: list[str]  # the layers whose weights are arguments, in argument order


@dataclass
class Calibration:
    """Per-layer input statistics of ``program`` on ``samples``.

    One probe program is compiled (on first use) that returns every dense
    layer's input and takes every layer's weights as arguments, so statistics
    under changed weights (``cross``, ``moments``) run the same compiled module
    again instead of compiling a new one per solved layer."""

    samples: Samples
    program: Program
    compile: Callable[[Program], Callable[..., list[np.ndarray]]]  # program -> runnable
    _grams: dict[str, np.ndarray] | None = field(default=None, repr=False)
    _probe: _CompiledProbe | None = field(default=None, repr=False)

    def measures(self, layer: str) -> bool:
        """Whether ``layer``'s inputs are measured (dense layers; not grouped convolutions)."""
        return layer in _probed_layers(self.program)

    def gram(self, layer: str) -> np.ndarray:
        """E[x·xᵀ] over the input rows x of ``layer`` (in×in, float64); every
        layer's is measured in one pass on first use and kept."""
        if not self.measures(layer):
            raise KeyError(f"no calibration statistics for layer {layer!r}")
        if self._grams is None:
            probe = self._compiled()
            sums: dict[str, np.ndarray] = {}
            for outs, real in self._run(probe, {}):
                for p, x in zip(probe.probes, outs):
                    # every layer's sum in float32 (half the memory of all the in×in
                    # matrices); each batch's product is formed in float64 and rounded once
                    _add_moment(sums, p.layer, _rows(x[:real], p), dtype=np.float32)
            for name, total in sums.items():
                total /= self._count(probe.probes, name)
            self._grams = sums
        return self._grams[layer].astype(np.float64)

    def cross(self, layer: str, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(E[x̃·x̃ᵀ], E[x·x̃ᵀ]) for ``layer``, where x̃ is its input when the layers
        in ``weights`` (original layer -> array in the parameter's layout) compute
        with those weights and x its original input, row for row. Solving a layer
        against x̃ corrects the error that already-compressed layers feed it."""
        d = self.moments(layer, weights)
        return d.gcc, d.goc

    def moments(self, layer: str, weights: dict[str, np.ndarray]) -> "LayerData":
        """``layer``'s input moments with the layers in ``weights`` changed (see
        ``cross``), measured for this layer alone: a sequential solver holds one
        layer's matrices at a time, not every layer's Gram."""
        if not self.measures(layer):
            raise KeyError(f"no calibration statistics for layer {layer!r}")
        probe = self._compiled()
        at = [i for i, p in enumerate(probe.probes) if p.layer == layer]
        sums: dict[str, np.ndarray] = {}
        changed_runs = self._run(probe, weights) if weights else None
        for outs, real in self._run(probe, {}):
            changed = next(changed_runs)[0] if changed_runs else outs
            for i in at:
                ro = _rows(outs[i][:real], probe.probes[i])
                rc = _rows(changed[i][:real], probe.probes[i]) if weights else ro
                _add_moment(sums, "oo", ro)
                if weights:
                    _add_moment(sums, "cc", rc)
                    _add_moment(sums, "oc", ro, rc)
        n = self._count(probe.probes, layer)
        for m in sums.values():
            m /= n
        return LayerData(sums["oo"], sums["cc"], sums["oc"]) if weights else LayerData.same(sums["oo"])

    def release(self) -> None:
        """Drop the kept Gram matrices (measured again on next use): a sequential
        solver measures each layer itself and needs the memory for its own."""
        self._grams = None

    def _compiled(self) -> _CompiledProbe:
        if self._probe is None:
            program, probes, weights = _probe_program(self.program)
            self._probe = _CompiledProbe(self.compile(program), probes, weights)
        return self._probe

    def _run(self, probe: _CompiledProbe, weights: dict[str, np.ndarray]) -> Iterator[tuple[list[np.ndarray], int]]:
        """The probe's extra results (layer inputs) per calibration batch, with
        the layers in ``weights`` computing with those arrays."""
        unknown = set(weights) - set(probe.weights)
        if unknown:
            raise KeyError(f"layer(s) {', '.join(sorted(unknown))} have no weights the calibration probe can change")
        params = self.program.params
        args = [np.ascontiguousarray(weights[name], dtype=params[name].dtype) if name in weights else params[name] for name in probe.weights]
        n_out = len(_return_op(self.program).operands)
        for chunk, real in self.samples.batches(self.program.example_inputs[0].shape[0]):
            yield probe.run(*chunk, *args)[n_out:], real

    def _count(self, probes: list[_Probe], layer: str) -> int:
        """Rows per layer: samples × rows per sample × uses of the layer."""
        return sum(p.rows_per_sample for p in probes if p.layer == layer) * len(self.samples)


@dataclass
class LayerData:
    """Second moments of a layer's inputs: x as in the original model, x̃ as the
    compressed model feeds it (x̃ = x unless solving sequentially)."""

    goo: np.ndarray  # E[x·xᵀ]
    gcc: np.ndarray  # E[x̃·x̃ᵀ]
    goc: np.ndarray  # E[x·x̃ᵀ]

    @classmethod
    def same(cls, gram: np.ndarray) -> "LayerData":
        return cls(gram, gram, gram)

    def through(self, inputs: np.ndarray | None) -> "LayerData":
        """The moments of the inputs xᵀ·T a structured matrix reads (``Structure.input_map``; None: x itself)."""
        if inputs is None:
            return self
        return LayerData(*(inputs.T @ g @ inputs for g in (self.goo, self.gcc, self.goc)))


def objective(w: np.ndarray, z: np.ndarray, d: LayerData) -> float:
    """‖W·X − Z·X̃‖² relative to ‖W·X‖²: the output error of weights Z fed x̃."""
    return reconstruction_error(w, d)(z)


def reconstruction_error(w: np.ndarray, d: LayerData) -> Callable[[np.ndarray], float]:
    """``objective(w, ·, d)`` with the terms that depend only on W computed once
    (an iterative solver evaluates it every step), each term one matrix product."""
    w = w.astype(np.float64)
    base = float(np.sum((w @ d.goo) * w))
    target = w @ d.goc

    def error(z: np.ndarray) -> float:
        z = z.astype(np.float64)
        err = base - 2 * float(np.sum(target * z)) + float(np.sum((z @ d.gcc) * z))
        return max(err, 0.0) / base if base > 0 else 0.0

    return error


def solve_in_order(
    method: str, layers: list[Layer], solve: Callable[[Layer, LayerData | None], Plan | Skip], ctx: MethodContext,
    sequential: bool, passes: int = 1,
) -> dict[str, Plan | Skip]:
    """Every layer solved in program order, ``passes`` times: ``solve`` gets the
    layer's input statistics (None without --calib or for a layer not measured)
    and returns a Plan whose ``dense`` (out×in) is what the layer will compute
    with. With ``sequential`` each layer is solved on the inputs the layers
    solved before it produce (one calibration run per layer), so it corrects
    their error instead of fitting the dense model's activations."""
    cal = ctx.calibration
    plans: dict[str, Plan | Skip] = {}
    solved: dict[str, np.ndarray] = {}  # layer -> its solved weights, parameter layout
    if cal is not None and sequential:
        cal.release()
    for step in range(passes):
        for i, layer in enumerate(layers):
            ctx.progress(f"{method}: pass {step + 1}/{passes}, layer {i + 1}/{len(layers)} {layer.name}")
            data = None
            if cal is not None and cal.measures(layer.name):
                data = cal.moments(layer.name, solved) if sequential else LayerData.same(cal.gram(layer.name))
            plans[layer.name] = plan = solve(layer, data)
            if isinstance(plan, Plan):
                solved[layer.name] = layer.from_matrix(np.asarray(plan.dense, dtype=np.float32))
    return plans


def _add_moment(sums: dict[str, np.ndarray], key: str, a: np.ndarray, b: np.ndarray | None = None, dtype: Any = np.float64) -> None:
    """sums[key] += aᵀ·b (b = a), in place: one in×in temporary, not two."""
    product = a.T @ (a if b is None else b)
    if key in sums:
        sums[key] += product
    else:
        sums[key] = product.astype(dtype, copy=False)


def _rows(x: np.ndarray, p: _Probe) -> np.ndarray:
    """The layer input as rows (float64): matmul rows, or im2col patches."""
    x = x.astype(np.float64)
    if p.conv is None:
        return x.reshape(-1, x.shape[-1])
    (kh, kw), (sh, sw), (dh, dw) = p.conv
    win = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    patches = win[:, :, ::sh, ::sw, ::dh, ::dw]  # N, C, OH, OW, KH, KW
    n, c, oh, ow = patches.shape[:4]
    return patches.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)


def _return_op(program: Program) -> ir.Operation:
    return list(program.ops())[-1]


def _probed_layers(program: Program) -> set[str]:
    return {w.layer for w in program.weighted_ops() if _probed(w)}


def _probed(w: WeightedOp) -> bool:
    return w.matrix_form() is None and w.groups == 1  # statistics are per dense layer


def _probe_program(program: Program) -> tuple[Program, list[_Probe], list[str]]:
    """A copy of ``program`` that takes every layer's weights as arguments after
    the model's inputs and also returns the input of every dense layer op."""
    probe = program.clone()
    probes, extra = [], []
    batch = program.example_inputs[0].shape[0]
    for w in probe.weighted_ops():
        if _probed(w):
            conv = _conv_geometry(w) if w.kind == "conv2d" else None
            per_sample = (np.prod(w.output_shape[2:]) if conv else np.prod(w.input_shape[:-1])) // batch
            probes.append(_Probe(w.layer, conv, int(per_sample)))
            extra.append(w.op.operands[0])
    weights = list(dict.fromkeys(w.param for w in probe.weighted_ops() if w.param == w.layer))
    fn = probe.func
    with probe.context, ir.Location.unknown():
        for name in weights:
            const = probe.constant_op(name)
            arg = probe.body.add_argument(const.results[0].type, ir.Location.unknown())
            const.results[0].replace_all_uses_with(arg)
            const.erase()
        ret = _return_op(probe)
        values = list(ret.operands) + extra
        func.ReturnOp(values, ip=ir.InsertionPoint(ret))
        ret.erase()
        inputs = [a.type for a in probe.body.arguments]
        fn.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(inputs, [v.type for v in values]))
    probe.erase_dead()
    return probe, probes, weights


def _conv_geometry(w: WeightedOp) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    kh, kw = w.weight_shape[2:]
    strides = tuple(int(s) for s in np.array(w.op.attributes["strides"]))
    dilations = tuple(int(d) for d in np.array(w.op.attributes["dilations"]))
    return (kh, kw), strides, dilations
