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

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from torch_mlir import ir
from torch_mlir.dialects import func

from optc.api import MethodContext, Plan, Session, Skip
from optc.errors import InputError, first_line
from optc.program import Layer, Program, WeightedOp, operands_from_outside


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
    width: int  # values per row (the layer's in)
    values_per_sample: int  # of the layer input as the probe returns it


@dataclass
class _CompiledProbe:
    session: Session
    probes: list[_Probe]
    weights: list[str]  # the layers whose weights are arguments, in argument order
    segments: list["_Segment"]
    entries: list[Callable[..., list[np.ndarray]]]  # each segment's function

    def segment_of(self, probe: int) -> int:
        return next(j for j, s in enumerate(self.segments) if probe in s.probes)


@dataclass
class _Cut:
    """The values live across a segment's first cut, per calibration batch, and
    the digests of the upstream layers' weights they were computed with."""

    store: "_BatchStore"
    weights: dict[str, bytes | None]  # layer -> digest of its changed weights (None: original)

    @classmethod
    def digests(cls, names: Sequence[str], weights: dict[str, np.ndarray]) -> dict[str, bytes | None]:
        return {n: hashlib.blake2b(np.ascontiguousarray(weights[n]).data, digest_size=16).digest() if n in weights else None for n in names}

    def valid(self, weights: dict[str, np.ndarray]) -> bool:
        return self.digests(list(self.weights), weights) == self.weights


# A product of a few rows (one 7×7 image's 49 patches of 4608 inputs) runs BLAS at a
# tenth of its speed: rows are gathered to about this many bytes per operand first.
CHUNK_BYTES = 16 << 20


class _Products:
    """Sums of aᵀ·b over row blocks, for the (key, a, b) pairs of a tuple of row
    arrays, in float32: each chunk of at least ``CHUNK_BYTES`` of rows is
    multiplied a block of ``COLUMNS`` output columns at a time and added into
    the sum, so a 4608-wide layer holds its 85 MB sum and a 9 MB block, not
    also a full product and a float64 copy (each product accumulates in
    float32 inside BLAS anyway). For aᵀ·a only the upper triangle is formed
    (then mirrored by ``totals``): half the work, as a symmetric rank-k update."""

    COLUMNS = 512

    def __init__(self, width: int, pairs: Sequence[tuple[str, int, int]]):
        self.pairs = pairs
        self.min_rows = max(1, CHUNK_BYTES // (4 * width))
        self.pending: list[tuple[np.ndarray, ...]] = []
        self.rows = 0
        self.sums: dict[str, np.ndarray] = {}

    def add(self, *rows: np.ndarray) -> None:
        self.pending.append(rows)
        self.rows += len(rows[0])
        if self.rows >= self.min_rows:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        chunk = [np.ascontiguousarray(np.concatenate(column) if len(column) > 1 else column[0], dtype=np.float32) for column in zip(*self.pending)]
        self.pending, self.rows = [], 0
        for key, i, j in self.pairs:
            a, b = chunk[i], chunk[j]
            total = self.sums.setdefault(key, np.zeros((a.shape[1], b.shape[1]), dtype=np.float32))
            for c in range(0, b.shape[1], self.COLUMNS):
                end = min(c + self.COLUMNS, b.shape[1])
                rows = end if i == j else a.shape[1]  # aᵀ·a: the rows above and on the diagonal block
                total[:rows, c:end] += a[:, :rows].T @ b[:, c:end]

    def totals(self) -> dict[str, np.ndarray]:
        """The sums of every row added, the symmetric ones filled in (in place)."""
        self._flush()
        for key, i, j in self.pairs:
            if i == j and key in self.sums:
                _mirror_upper(self.sums[key])
        return self.sums


def _mirror_upper(m: np.ndarray, block: int = 512) -> None:
    """Copy the upper triangle of square ``m`` onto its lower one, in place, a
    block of rows at a time (no full-size temporary)."""
    for r in range(0, len(m), block):
        e = min(len(m), r + block)
        m[r:e, :r] = m[:r, r:e].T
        square, below = m[r:e, r:e], np.tril_indices(e - r, -1)
        square[below] = square.T[below]


class _BatchStore:
    """Arrays per calibration batch in a private temporary folder (the probe's
    results on the original weights, the values live across a cut): read back
    instead of running the model again."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="optc-calib-")  # mode 0700
        self._files: dict[int, Path] = {}
        self._layout: dict[int, tuple[np.dtype, tuple[int, ...]]] = {}

    def append(self, index: int, x: np.ndarray) -> None:
        path = self._files.setdefault(index, Path(self._folder.name) / f"{index}.bin")
        self._layout.setdefault(index, (x.dtype, x.shape))
        with open(path, "ab") as f:
            f.write(np.ascontiguousarray(x).tobytes())

    def read(self, indices: Sequence[int], counts: Sequence[int | None]) -> Iterator[list[np.ndarray]]:
        """The arrays at ``indices``, ``counts[b]`` rows of each for batch b
        (None: as many as the first array appended there had)."""
        files = [open(self._files[i], "rb") for i in indices]
        try:
            for count in counts:
                outs = []
                for i, f in zip(indices, files):
                    dtype, (rows, *shape) = self._layout[i]
                    rows = rows if count is None else count
                    outs.append(np.fromfile(f, dtype=dtype, count=rows * int(np.prod(shape))).reshape(rows, *shape))
                yield outs
        finally:
            for f in files:
                f.close()

    def close(self) -> None:
        self._folder.cleanup()


@dataclass
class Calibration:
    """Per-layer input statistics of ``program`` on ``samples``.

    One probe program is compiled (on first use) that returns every dense
    layer's input and takes every layer's weights as arguments, so statistics
    under changed weights (``cross``, ``moments``) run the same compiled module
    again instead of compiling a new one per solved layer. The probe is cut
    into segments between layers; the original weights' results are run once
    and kept on disk (when half the free space holds them), as are the values
    at the cuts a changed run crosses, so a sequential solver's next layer runs
    from the last cut before it, not from the model's inputs."""

    samples: Samples
    program: Program
    compile: Callable[[Program], Session]  # program -> runnable
    _grams: dict[str, np.ndarray] | None = field(default=None, repr=False)
    _probe: _CompiledProbe | None = field(default=None, repr=False)
    _store: _BatchStore | None = field(default=None, repr=False)
    _cuts: dict[int, _Cut] = field(default_factory=dict, repr=False)  # segment -> its first cut's values

    def measures(self, layer: str) -> bool:
        """Whether ``layer``'s inputs are measured (dense layers; not grouped convolutions)."""
        return layer in _probed_layers(self.program)

    def gram(self, layer: str) -> np.ndarray:
        """E[x·xᵀ] over the input rows x of ``layer`` (in×in, float32): from the
        stored original results, or (when they do not fit on disk) every layer's
        measured in one pass on first use and kept."""
        if not self.measures(layer):
            raise KeyError(f"no calibration statistics for layer {layer!r}")
        probe = self._compiled()
        if self._stored(probe):
            return self._sums(probe, layer, {}, None)["cc"]
        if self._grams is None:
            sums = {p.layer: _Products(p.width, [("oo", 0, 0)]) for p in probe.probes}
            for outs, real in self._run(probe, {}):
                for p, x in zip(probe.probes, outs):
                    sums[p.layer].add(_rows(x[:real], p))
            self._grams = {name: total.totals()["oo"] / self._count(probe.probes, name) for name, total in sums.items()}
        return self._grams[layer]

    def moments(self, layer: str, weights: dict[str, np.ndarray], w: np.ndarray) -> "LayerData":
        """What a solver needs to reconstruct the outputs ``w``·x of ``layer``
        (``w``: out×in, in the layer's input space) from its inputs x̃ when the
        layers in ``weights`` (original layer -> array in the parameter's layout)
        compute with those weights, x being its original input, row for row.
        Solving a layer against x̃ corrects the error that already-compressed
        layers feed it. Measured for this layer alone: a sequential solver holds
        one layer's matrices at a time, not every layer's Gram."""
        if not self.measures(layer):
            raise KeyError(f"no calibration statistics for layer {layer!r}")
        probe = self._compiled()
        if not weights:
            return LayerData.same(self._sums(probe, layer, {}, None)["cc"], w)
        sums = self._sums(probe, layer, weights, np.ascontiguousarray(w, dtype=np.float32))
        return LayerData(sums["cc"], sums["yc"], float(sums["yy"]), sequential=True)

    def _sums(self, probe: _CompiledProbe, layer: str, weights: dict[str, np.ndarray], w: np.ndarray | None) -> dict[str, np.ndarray]:
        """Means over ``layer``'s input rows: ``cc`` = E[x̃·x̃ᵀ]; with ``w`` also
        ``yc`` = E[(w·x)·x̃ᵀ] and ``yy`` = E‖w·x‖², where x̃ is the input under
        ``weights`` (x itself when empty)."""
        at = [i for i, p in enumerate(probe.probes) if p.layer == layer]
        width = probe.probes[at[0]].width
        sums = _Products(width, [("cc", 1, 1), ("yc", 0, 1)] if w is not None else [("cc", 0, 0)])
        yy = 0.0
        self._stored(probe)  # the original results before the changed run: it can then start at a stored cut
        originals = self._originals(probe, at)
        # the changed run first: zip then runs it to its end, where it keeps the cuts it stored
        pairs = zip(self._run(probe, weights, at), originals) if weights else (((None, real), (outs, real)) for outs, real in originals)
        for (changed, _), (outs, real) in pairs:
            for k, i in enumerate(at):
                x = _rows(outs[k][:real], probe.probes[i])
                if w is None:
                    sums.add(x)
                    continue
                y = x @ w.T  # the layer's reference outputs: W·E[x·x̃ᵀ] without the in×in E[x·x̃ᵀ]
                yy += float(np.einsum("ij,ij->", y, y, dtype=np.float64))
                sums.add(y, _rows(changed[k][:real], probe.probes[i]) if changed is not None else x)
        n = self._count(probe.probes, layer)
        totals = sums.totals()
        for m in totals.values():
            m /= n
        return {**totals, "yy": yy / n}

    def release(self) -> None:
        """Drop the kept Gram matrices (measured again on next use): a sequential
        solver measures each layer itself and needs the memory for its own."""
        self._grams = None

    def close(self) -> None:
        """Drop everything measured and kept (stored results, the compiled probe)."""
        self.release()
        for stored in [self._store, *(c.store for c in self._cuts.values())]:
            if stored is not None:
                stored.close()
        self._store, self._cuts, self._probe = None, {}, None

    def _compiled(self) -> _CompiledProbe:
        if self._probe is None:
            program, probes, weights, segments = _probe_program(self.program)
            session = self.compile(program)
            self._probe = _CompiledProbe(session, probes, weights, segments, [session.entry(s.func) for s in segments])
        return self._probe

    def _stored(self, probe: _CompiledProbe) -> bool:
        """Whether the original weights' results are in the store: on first use,
        the original model is run once into it when half the free disk space holds them."""
        if self._store is None:
            size = sum(p.values_per_sample for p in probe.probes) * 4 * len(self.samples)
            if size <= shutil.disk_usage(tempfile.gettempdir()).free // 2:
                store = _BatchStore()
                for outs, real in self._run(probe, {}):
                    for i, x in enumerate(outs):
                        store.append(i, x[:real])
                self._store = store
        return self._store is not None

    def _originals(self, probe: _CompiledProbe, indices: Sequence[int]) -> Iterator[tuple[list[np.ndarray], int]]:
        """The probe's results at ``indices`` on the original weights, per calibration batch."""
        if self._stored(probe):
            batches = [real for _, real in self.samples.batches(self._batch)]
            yield from zip(self._store.read(indices, batches), batches)
        else:
            yield from self._run(probe, {}, indices)

    def _run(self, probe: _CompiledProbe, weights: dict[str, np.ndarray], indices: Sequence[int] | None = None) -> Iterator[tuple[list[np.ndarray], int]]:
        """The probe's results at ``indices`` (default: all) per calibration batch,
        with the layers in ``weights`` computing with those arrays. Once the
        original results are stored, the run starts at the last cut before those
        results whose stored values are valid for ``weights``, and stores the
        cuts it crosses up to there, for the next layer a sequential solver asks for."""
        unknown = set(weights) - set(probe.weights)
        if unknown:
            raise KeyError(f"layer(s) {', '.join(sorted(unknown))} have no weights the calibration probe can change")
        params = self.program.params
        args = [np.ascontiguousarray(weights[name], dtype=params[name].dtype) if name in weights else params[name] for name in probe.weights]
        args = probe.session.resident(args)  # uploaded once for every batch, not copied per call
        indices = list(range(len(probe.probes))) if indices is None else list(indices)
        first = min(probe.segment_of(i) for i in indices)
        last = max(probe.segment_of(i) for i in indices)
        start, kept = 0, {}
        if self._store is not None:
            start = max((j for j, cut in self._cuts.items() if j <= first and cut.valid(weights)), default=0)
            for j in [j for j in self._cuts if j != start]:  # solving in order, none is needed again
                self._cuts.pop(j).store.close()
            kept = {j: _Cut(_BatchStore(), _Cut.digests(probe.segments[j].upstream, weights)) for j in range(start + 1, first + 1)}
        batches = list(self.samples.batches(self._batch))
        cut_values = self._cuts[start].store.read(range(probe.segments[start].live_in), [None] * len(batches)) if start else None
        for chunk, real in batches:
            live = next(cut_values) if cut_values is not None else []
            outs: dict[int, np.ndarray] = {}
            for j in range(start, last + 1):
                segment = probe.segments[j]
                results = probe.entries[j](*chunk, *args, *live)
                live = results[:segment.live_out]
                outs.update(zip(segment.probes, results[segment.live_out:]))
                if j + 1 in kept:
                    for m, x in enumerate(live):
                        kept[j + 1].store.append(m, x)
            yield [outs[i] for i in indices], real
        self._cuts.update(kept)

    @property
    def _batch(self) -> int:
        return self.program.example_inputs[0].shape[0]

    def _count(self, probes: list[_Probe], layer: str) -> int:
        """Rows per layer: samples × rows per sample × uses of the layer."""
        return sum(p.rows_per_sample for p in probes if p.layer == layer) * len(self.samples)


@dataclass
class LayerData:
    """What a solver needs to reconstruct a layer's outputs W·x from inputs x̃:
    x as in the original model, x̃ as the compressed model feeds it (x̃ = x
    unless solving sequentially). Only E[x̃·x̃ᵀ] is in×in: W·E[x·x̃ᵀ] and E‖W·x‖²
    are measured through W, so a layer with 4,608 inputs holds one 85 MB
    float32 matrix, not three float64 ones. Solvers take float64 copies of the
    blocks they factor."""

    gcc: np.ndarray  # E[x̃·x̃ᵀ] (in×in, float32)
    target: np.ndarray  # W·E[x·x̃ᵀ] (out×in, float32)
    base: float  # E‖W·x‖²
    sequential: bool = False  # x̃ measured under changed earlier layers

    @classmethod
    def same(cls, gram: np.ndarray, w: np.ndarray) -> "LayerData":
        """x̃ = x, with E[x·xᵀ] = ``gram`` (float32)."""
        target = w.astype(np.float32) @ gram
        return cls(gram, target, float(np.sum(target * w, dtype=np.float64)))

    def through(self, inputs: np.ndarray | None) -> "LayerData":
        """The data of the structured inputs xᵀ·T a structured matrix reads
        (``Structure.input_map``; None: x itself), for W measured as the layer's
        effective weight (the structured matrix · Tᵀ)."""
        if inputs is None:
            return self
        t = inputs.astype(np.float32)
        return LayerData(t.T @ self.gcc @ t, self.target @ t, self.base, self.sequential)


def damping(g: np.ndarray, damp: float) -> float:
    """What a solver adds to G's diagonal so that rank-deficient inputs still
    solve: ``damp`` times the mean of the diagonal (``damp`` for a zero G)."""
    return damp * (float(np.mean(np.diag(g))) or 1.0)


def plus_diagonal(g: np.ndarray, lam: float) -> np.ndarray:
    """A float64 copy of square ``g`` with ``lam`` added to its diagonal (no
    identity matrix beside it: for a 4608-wide G that is another 170 MB)."""
    out = g.astype(np.float64)
    out.flat[:: len(out) + 1] += lam
    return out


def objective(z: np.ndarray, d: LayerData) -> float:
    """‖W·X − Z·X̃‖² relative to ‖W·X‖²: the output error of weights Z fed x̃."""
    return reconstruction_error(d)(z)


def reconstruction_error(d: LayerData) -> Callable[[np.ndarray], float]:
    """``objective(·, d)``, each evaluation two matrix products (an iterative solver evaluates it every step)."""

    def error(z: np.ndarray) -> float:
        z = z.astype(d.gcc.dtype)  # a float64 z would make a float64 copy of a float32 G̃
        err = d.base - 2 * float(np.sum(d.target * z, dtype=np.float64)) + float(np.sum((z @ d.gcc) * z, dtype=np.float64))
        return max(err, 0.0) / d.base if d.base > 0 else 0.0

    return error


def solve_in_order(
    method: str, layers: list[Layer], solve: Callable[[Layer, LayerData | None], Plan | Skip], ctx: MethodContext,
    sequential: bool, passes: int = 1, reference: Callable[[Layer], np.ndarray] | None = None,
) -> dict[str, Plan | Skip]:
    """Every layer solved in program order, ``passes`` times: ``solve`` gets the
    layer's input statistics (None without --calib or for a layer not measured)
    for reconstructing the outputs of ``reference(layer)`` (out×in in the
    layer's input space; default: its matrix) and returns a Plan whose
    ``dense`` (out×in) is what the layer will compute with. With
    ``sequential`` each layer is solved on the inputs the layers solved before
    it produce (one calibration run per layer), so it corrects their error
    instead of fitting the dense model's activations."""
    reference = reference or (lambda layer: layer.matrix())
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
                w = reference(layer)
                data = cal.moments(layer.name, solved, w) if sequential else LayerData.same(cal.gram(layer.name), w)
            plans[layer.name] = plan = solve(layer, data)
            if isinstance(plan, Plan):
                solved[layer.name] = layer.from_matrix(np.asarray(plan.dense, dtype=np.float32))
    return plans


def _rows(x: np.ndarray, p: _Probe) -> np.ndarray:
    """The layer input as rows (float32): matmul rows, or im2col patches."""
    x = x.astype(np.float32, copy=False)
    if p.conv is None:
        return x.reshape(-1, x.shape[-1])
    (kh, kw), (sh, sw), (dh, dw) = p.conv
    win = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    patches = win[:, :, ::sh, ::sw, ::dh, ::dw]  # N, C, OH, OW, KH, KW
    n, c, oh, ow = patches.shape[:4]
    return patches.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)


def _probed_layers(program: Program) -> set[str]:
    return {w.layer for w in program.weighted_ops() if _probed(w)}


def _probed(w: WeightedOp) -> bool:
    return w.matrix_form() is None and w.groups == 1  # statistics are per dense layer


def _probe_program(program: Program) -> tuple[Program, list[_Probe], list[str], list[_Segment]]:
    """A copy of ``program`` that takes every layer's weights as arguments after
    the model's inputs, cut into segments that return the input of every dense
    layer op (see ``_split``)."""
    probe = program.clone()
    probes, probed_ops = [], []
    batch = program.example_inputs[0].shape[0]
    for w in probe.weighted_ops():
        if _probed(w):
            conv = _conv_geometry(w) if w.kind == "conv2d" else None
            per_sample = (np.prod(w.output_shape[2:]) if conv else np.prod(w.input_shape[:-1])) // batch
            width = w.input_shape[1] * int(np.prod(w.weight_shape[2:])) if conv else w.input_shape[-1]
            probes.append(_Probe(w.layer, conv, int(per_sample), int(width), int(np.prod(w.input_shape)) // batch))
            probed_ops.append(w.op)
    weights = list(dict.fromkeys(w.param for w in probe.weighted_ops() if w.param == w.layer))
    with probe.context, ir.Location.unknown():
        for name in weights:
            const = probe.constant_op(name)
            arg = probe.body.add_argument(const.results[0].type, ir.Location.unknown())
            const.results[0].replace_all_uses_with(arg)
            const.erase()
        probe.func.attributes["function_type"] = ir.TypeAttr.get(
            ir.FunctionType.get([a.type for a in probe.body.arguments], probe.function_type.results))
    segments = _split(probe, probed_ops, [p.layer for p in probes], weights, len(program.example_inputs))
    return probe, probes, weights, segments


@dataclass
class _Segment:
    """A function of the probe module: the ops between two cuts of the model.
    It takes (model inputs…, weights…, the values live across its first cut…)
    and returns (the values live across its last cut…, its probes' layer inputs…)."""

    func: str
    live_in: int
    live_out: int
    probes: list[int]  # indices into the probe list, in the order returned
    upstream: list[str]  # the weights the values it takes at its first cut depend on


def _split(probe: Program, probed_ops: list[ir.Operation], layers: list[str], weights: list[str], n_inputs: int) -> list[_Segment]:
    """Cut ``probe``'s function (in place) into segment functions, between layers:
    at a point between two layers' ops (no layer has ops on both sides) where the
    model-input-dependent values live across it take the fewest bytes. Solving
    layers in order then runs only the segments from the last cut before the
    layer, from that cut's stored values (``Calibration._run``)."""
    fn = probe.func
    ops = list(probe.ops())
    top_index = {op: i for i, op in enumerate(ops)}
    ops.pop()  # the model's outputs are not the probe's: the return's reads keep nothing live

    def top(op: Any) -> int:
        op = op.operation  # an OpView or an Operation
        while op not in top_index:
            op = op.parent
        return top_index[op]

    # which ops depend on the model inputs, and on which weights
    dependent: set[int] = set()
    upstream: list[set[str]] = []
    for i in range(len(ops)):
        upstream.append(set())
        for v in operands_from_outside(ops[i]):
            if isinstance(v, ir.BlockArgument):  # of the function: a model input or a weight
                if v.arg_number < n_inputs:
                    dependent.add(i)
                else:
                    upstream[i].add(weights[v.arg_number - n_inputs])
            else:
                t = top(v.owner)
                upstream[i] |= upstream[t]
                if t in dependent:
                    dependent.add(i)
    last_use: dict[tuple[int, int], int] = {}
    for d in sorted(dependent):
        for r, result in enumerate(ops[d].results):
            uses = [t for u in result.uses if (t := top(u.owner)) < len(ops)]
            if uses:
                last_use[(d, r)] = max(uses)

    def live(c: int) -> list[tuple[int, int]]:
        return sorted(k for k, last in last_use.items() if k[0] < c <= last)

    live_bytes = np.zeros(len(ops) + 2, dtype=np.int64)  # bytes live across each point, by a sweep
    for (d, r), last in last_use.items():
        live_bytes[d + 1] += _tensor_bytes(ops[d].results[r].type)
        live_bytes[last + 1] -= _tensor_bytes(ops[d].results[r].type)
    live_bytes = np.cumsum(live_bytes)

    # clean gaps between layers, and the cheapest cut in each
    at = [top(op) for op in probed_ops]
    order = sorted(range(len(at)), key=lambda k: at[k])
    last_op = {layers[k]: at[k] for k in order}  # each layer's last op
    cuts, reach = [0], -1  # reach: the last op of any layer seen so far
    for a, b in zip(order, order[1:]):
        reach = max(reach, last_op[layers[a]])
        if at[a] == at[b] or reach >= at[b]:  # no cut inside a layer's ops
            continue
        cuts.append(min(range(at[a] + 1, at[b] + 1), key=lambda c: (live_bytes[c], -c)))
    cuts.append(len(ops))

    segments = []
    with probe.context, ir.Location.unknown():
        fn.attributes["sym_name"] = ir.StringAttr.get("probe")  # its segments take the names
        for j, (start, end) in enumerate(zip(cuts, cuts[1:])):
            name = f"segment{j}" if j else "main"  # a session opens a module at its main
            clone = fn.clone(ip=ir.InsertionPoint(fn))
            clone.attributes["sym_name"] = ir.StringAttr.get(name)
            cbody = clone.regions[0].blocks[0]
            cops = [op.operation for op in cbody.operations]
            live_in, live_out = live(start), live(end) if end < len(ops) else []
            args = {}
            for d, r in live_in:
                args[(d, r)] = arg = cbody.add_argument(cops[d].results[r].type, ir.Location.unknown())
                cops[d].results[r].replace_all_uses_with(arg)
            mine = [k for k in range(len(at)) if start <= at[k] < end]
            values = [args.get((d, r)) or cops[d].results[r] for d, r in live_out] + [cops[at[k]].operands[0] for k in mine]
            func.ReturnOp(values, ip=ir.InsertionPoint(cops[-1]))
            cops[-1].erase()
            clone.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get([a.type for a in cbody.arguments], [v.type for v in values]))
            probe.function(name).erase_dead()
            depends = set().union(*(upstream[d] for d, _ in live_in))
            segments.append(_Segment(name, len(live_in), len(live_out), mine, [w for w in weights if w in depends]))
        fn.erase()
    probe.func_name = segments[0].func
    return segments


def _tensor_bytes(t: ir.Type) -> int:
    shaped = ir.ShapedType(t)
    return int(np.prod(shaped.shape)) * max(1, shaped.element_type.width // 8) if shaped.has_static_shape else 1 << 40


def _conv_geometry(w: WeightedOp) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    kh, kw = w.weight_shape[2:]
    strides = tuple(int(s) for s in np.array(w.op.attributes["strides"]))
    dilations = tuple(int(d) for d in np.array(w.op.attributes["dilations"]))
    return (kh, kw), strides, dilations
