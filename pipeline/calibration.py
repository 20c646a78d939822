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

from optc.errors import InputError
from optc.program import Program, WeightedOp


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


def read_arrays(path: Path, what: str) -> Any:
    """``np.load`` that never unpickles: an array (.npy) or an NpzFile, or one
    InputError line starting with ``what`` when the file is absent or not arrays."""
    if not path.exists():
        raise InputError(f"{what}: file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{what}: not a .npy/.npz array file ({str(e).splitlines()[0]})") from None


def load_samples(path: Path, example_inputs: Sequence[np.ndarray], flag: str, need_labels: bool = False) -> Samples:
    """Read and check a sample file against the model's example inputs."""
    path = Path(path)
    data = read_arrays(path, f"{flag} {path}")
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(f"{flag} {path}: expected a .npz with arrays x (inputs) and y (labels)")
    names = ["x"] if len(example_inputs) == 1 else [f"x{i}" for i in range(len(example_inputs))]
    missing = [n for n in names + (["y"] if need_labels else []) if n not in data.files]
    if missing:
        raise InputError(f"{flag} {path}: missing array(s) {', '.join(missing)}; it has {', '.join(data.files) or 'none'} (x: inputs, batch first; y: labels)")
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
        inputs.append(np.ascontiguousarray(x.astype(example.dtype)))
    if len({len(x) for x in inputs}) != 1:
        raise InputError(f"{flag} {path}: the input arrays hold different numbers of samples")
    labels = None
    if "y" in data.files:
        labels = data["y"]
        if labels.shape != (len(inputs[0]),) or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{flag} {path}: y must be integer labels of shape ({len(inputs[0])},), got {labels.dtype} {_fmt(labels.shape)}")
    return Samples(path, inputs, labels)


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def top1(predict: Callable[[list[np.ndarray]], np.ndarray], samples: Samples, batch: int) -> float:
    """Top-1 accuracy of ``predict`` (inputs -> logits, batch first) on labelled samples."""
    assert samples.labels is not None
    hits = 0
    done = 0
    for chunk, real in samples.batches(batch):
        logits = np.asarray(predict(chunk)).reshape(batch, -1)[:real]
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

    def gram(self, layer: str) -> np.ndarray:
        """E[x·xᵀ] over the input rows x of ``layer`` (in×in, float64)."""
        if self._grams is None:
            run, probes = self._original_probe()
            sums: dict[str, np.ndarray] = {}
            for outs, real in self._run(run):
                for p, x in zip(probes, outs):
                    rows = _rows(x[:real], p)
                    sums[p.layer] = sums.get(p.layer, 0) + rows.T @ rows
            self._grams = {layer: total / self._count(probes, layer) for layer, total in sums.items()}
        if layer not in self._grams:
            raise KeyError(f"no calibration statistics for layer {layer!r}")
        return self._grams[layer]

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
