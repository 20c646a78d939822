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
class Calibration:
    """Per-layer input statistics of ``program`` on ``samples`` (measured on first use)."""

    samples: Samples
    program: Program
    compile: Callable[[Program], Callable[..., list[np.ndarray]]]  # program -> runnable
    _grams: dict[str, np.ndarray] | None = field(default=None, repr=False)
    _original: tuple[Callable[..., list[np.ndarray]], list[_Probe]] | None = field(default=None, repr=False)

    def measures(self, layer: str) -> bool:
        """Whether ``layer``'s inputs are measured (dense layers; not grouped convolutions)."""
        self._measure()
        return layer in self._grams

    def gram(self, layer: str) -> np.ndarray:
        """E[x·xᵀ] over the input rows x of ``layer`` (in×in, float64)."""
        self._measure()
        if layer not in self._grams:
            raise KeyError(f"no calibration statistics for layer {layer!r}")
        return self._grams[layer]

    def _measure(self) -> None:
        if self._grams is None:
            run, probes = self._original_probe()
            sums: dict[str, np.ndarray] = {}
            for outs, real in self._run(run):
                for p, x in zip(probes, outs):
                    rows = _rows(x[:real], p)
                    sums[p.layer] = sums.get(p.layer, 0) + rows.T @ rows
            self._grams = {layer: total / self._count(probes, layer) for layer, total in sums.items()}

    def cross(self, layer: str, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(E[x̃·x̃ᵀ], E[x·x̃ᵀ]) for ``layer``, where x̃ is its input when the layers
        in ``weights`` (original layer -> array in the parameter's layout) compute
        with those weights and x its original input, row for row. Solving a layer
        against x̃ corrects the error that already-compressed layers feed it."""
        run, probes = self._original_probe()
        changed_run, _ = self._probe(weights)
        cc, oc = 0, 0
        for (outs, real), (changed, _) in zip(self._run(run), self._run(changed_run)):
            for p, x, xc in zip(probes, outs, changed):
                if p.layer == layer:
                    ro, rc = _rows(x[:real], p), _rows(xc[:real], p)
                    cc, oc = cc + rc.T @ rc, oc + ro.T @ rc
        n = self._count(probes, layer)
        return cc / n, oc / n

    def _original_probe(self) -> tuple[Callable[..., list[np.ndarray]], list[_Probe]]:
        if self._original is None:
            self._original = self._probe({})
        return self._original

    def _probe(self, weights: dict[str, np.ndarray]) -> tuple[Callable[..., list[np.ndarray]], list[_Probe]]:
        probe, probes = _probe_program(self.program, weights)
        return self.compile(probe), probes

    def _run(self, run: Callable[..., list[np.ndarray]]) -> Iterator[tuple[list[np.ndarray], int]]:
        """The probe's extra results (layer inputs) per calibration batch."""
        n_out = len(_return_op(self.program).operands)
        for chunk, real in self.samples.batches(self.program.example_inputs[0].shape[0]):
            yield run(*chunk)[n_out:], real

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
    w, z = w.astype(np.float64), z.astype(np.float64)
    base = float(np.einsum("ik,kl,il->", w, d.goo, w))
    err = base - 2 * float(np.einsum("ik,kl,il->", w, d.goc, z)) + float(np.einsum("ik,kl,il->", z, d.gcc, z))
    return max(err, 0.0) / base if base > 0 else 0.0


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
    for step in range(passes):
        for i, layer in enumerate(layers):
            ctx.progress(f"{method}: pass {step + 1}/{passes}, layer {i + 1}/{len(layers)} {layer.name}")
            data = None
            if cal is not None and cal.measures(layer.name):
                gram = cal.gram(layer.name)
                data = LayerData(gram, *cal.cross(layer.name, solved)) if sequential and solved else LayerData.same(gram)
            plans[layer.name] = plan = solve(layer, data)
            if isinstance(plan, Plan):
                solved[layer.name] = layer.from_matrix(np.asarray(plan.dense, dtype=np.float32))
    return plans


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


def _probe_program(program: Program, weights: dict[str, np.ndarray]) -> tuple[Program, list[_Probe]]:
    """A copy of ``program`` with ``weights`` swapped in that also returns the
    input of every matrix-form layer op."""
    probe = program.clone()
    for layer, array in weights.items():
        old = probe.constant_op(layer)
        probe.replace(old, probe.constant(f"{layer}.calibrated", array.astype(probe.params[layer].dtype), origin=layer))
    probes, extra = [], []
    batch = program.example_inputs[0].shape[0]
    for w in probe.weighted_ops():
        if w.matrix_form() is not None or w.groups != 1:  # statistics are per dense layer
            continue
        conv = _conv_geometry(w) if w.kind == "conv2d" else None
        per_sample = (np.prod(w.output_shape[2:]) if conv else np.prod(w.input_shape[:-1])) // batch
        probes.append(_Probe(w.layer, conv, int(per_sample)))
        extra.append(w.op.operands[0])
    ret = _return_op(probe)
    values = list(ret.operands) + extra
    with probe.context, ret.location:
        func.ReturnOp(values, ip=ir.InsertionPoint(ret))
        ret.erase()
        fn = probe.func
        inputs = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value).inputs
        fn.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(inputs, [v.type for v in values]))
    return probe, probes


def _conv_geometry(w: WeightedOp) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    kh, kw = w.weight_shape[2:]
    strides = tuple(int(s) for s in np.array(w.op.attributes["strides"]))
    dilations = tuple(int(d) for d in np.array(w.op.attributes["dilations"]))
    return (kh, kw), strides, dilations
