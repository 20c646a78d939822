"""Lower a loaded model to linalg on tensors with torch-mlir's FX importer.

Each parameter becomes ``arith.constant dense_resource<FQN>``: the importer's
``resolve_literal`` hook receives the parameter tensor itself (no name), so we
map ``id(tensor)`` to its key in the exported program's state_dict/constants.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Iterator, Sequence

import numpy as np

from optc.errors import InputError, LowerError, OptcError, first_line
from optc.load import Model
from optc.program import Program

_ILLEGAL_OP_RES = (
    re.compile(r'"torch\.operator"\([^)]*\)\s*<\{name = "torch\.([^"]+)"'),  # an opaque/custom op
    re.compile(r"failed to legalize operation '([^']+)'"),
    re.compile(r"unsupported by backend contract: (?:[^\n]*?)'([^']+)'"),
    re.compile(r'torch\.operator"?\(?\s*"([^"]+)"'),
    re.compile(r"found an op that was marked as backend illegal\W+([\w.]+)"),
)


def _naming_hooks(names: dict[int, str]) -> Any:
    from torch_mlir import ir
    from torch_mlir.extras.fx_importer import FxImporterHooks, create_mlir_tensor_type

    class NamingHooks(FxImporterHooks):
        def __init__(self) -> None:
            self.params: dict[str, np.ndarray] = {}
            self._attrs: dict[str, Any] = {}

        def resolve_literal(self, gni: Any, literal: Any, info: Any) -> Any:
            import torch

            if not isinstance(literal, torch.Tensor) or literal.numel() <= 1:
                return None  # scalars stay splat constants, as the default path does
            name = names.get(id(literal))
            if name is None:
                return None
            attr = self._attrs.get(name)
            if attr is None:  # one blob per parameter, however many uses
                arr = np.ascontiguousarray(literal.detach().cpu().numpy())
                self.params[name] = arr
                attr = ir.DenseResourceElementsAttr.get_from_buffer(arr, name, create_mlir_tensor_type(literal))
                self._attrs[name] = attr
            vtype = gni._cc.tensor_to_vtensor_type(literal)
            return ir.Operation.create(name="torch.vtensor.literal", results=[vtype], attributes={"value": attr}).result

    return NamingHooks()


class _Captured:
    text = ""


@contextlib.contextmanager
def _captured_output() -> Iterator[_Captured]:
    """Capture fds 1 and 2 (and Python's streams, which write there): MLIR prints
    its diagnostics (the op that failed) to fd 2, not into the exception, and
    torch.export prints graph dumps and logger tracebacks when it fails. The
    error names the op; the rest is kept for ``optc --verbose``."""
    captured = _Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+", errors="replace") as buf:
        for fd in saved:
            os.dup2(buf.fileno(), fd)
        try:
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in saved.items():
                os.dup2(old, fd)
                os.close(old)
            buf.seek(0)
            captured.text = buf.read()


@contextlib.contextmanager
def _private_tempdir() -> Iterator[str]:
    """Point ``tempfile`` at a fresh 0700 folder, removed afterwards whatever
    happens: torch-mlir writes a failing module (every weight, in hex) to
    ``tempfile.gettempdir()/UnnammedModule.mlir`` as a reproducer, readable by
    anyone, and never removes it."""
    folder = tempfile.mkdtemp(prefix="optc-lower-")  # mode 0700
    previous = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield folder
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(folder, ignore_errors=True)


def unlowerable_op(message: str) -> str | None:
    for rx in _ILLEGAL_OP_RES:
        m = rx.search(message)
        if m:
            return m.group(1)
    return None


def lower(model: Model) -> Program:
    """torch.export -> decompositions -> torch-mlir -> linalg on tensors."""
    diagnostics = _Captured()
    with _private_tempdir():
        try:
            with _captured_output() as diagnostics:
                module, params = _export_and_import(model)
        except OptcError as e:
            e.detail = diagnostics.text
            raise
        except Exception as e:
            text = diagnostics.text + "\n" + str(e)
            op = unlowerable_op(text)
            if op:
                raise LowerError(f"cannot lower op {op} of {model.source} to linalg (torch-mlir has no lowering for it)", detail=text) from None
            raise LowerError(f"lowering {model.source} to linalg failed: {first_line(e)}", detail=text) from None
    inputs = tuple(np.ascontiguousarray(t.detach().cpu().numpy()) for t in model.example_inputs)
    return Program(module=module, params=params, example_inputs=inputs)


def _export_and_import(model: Model) -> tuple[Any, dict[str, np.ndarray]]:
    from torch_mlir import fx
    from torch_mlir.extras.fx_decomp_util import get_decomposition_table

    ep = model.export()
    try:
        ep = ep.run_decompositions(get_decomposition_table())
    except Exception as e:
        raise LowerError(f"decomposing {model.source} failed: {first_line(e)}") from None
    names = {id(t): k for k, t in ep.state_dict.items()}
    names.update({id(t): k for k, t in ep.constants.items()})
    hooks = _naming_hooks(names)
    module = fx.export_and_import(ep, output_type="raw", hooks=hooks, decomposition_table={})
    _run_pipelines(module)
    return module, dict(hooks.params)


# torch-mlir's own two lowering pipelines (fx.export_and_import with
# output_type="linalg-on-tensors"), run here because its runner first prints the
# whole module for a repro report, weights included as hex: ~4x the weights in
# peak memory (1.1 GB for a 256 MiB Linear) and seconds of time, for a report we
# never show (lower() captures the diagnostics itself).
_TORCH_MLIR_PIPELINES = (
    "builtin.module(func.func(torch-match-quantized-custom-ops), torchdynamo-export-to-torch-backend-pipeline{ extra-library=})",
    "builtin.module(torch-backend-to-linalg-on-tensors-backend-pipeline{allow-non-finites=True})",
)


def _run_pipelines(module: Any) -> None:
    from torch_mlir.passmanager import PassManager

    with module.context as ctx:
        ctx.emit_error_diagnostics = True
        for pipeline in _TORCH_MLIR_PIPELINES:
            PassManager.parse(pipeline).run(module.operation)


_INDEX_VIEWS = ("tensor.collapse_shape", "tensor.expand_shape", "tensor.cast")


def input_index_ranges(program: Program) -> dict[int, tuple[int, int]]:
    """Integer inputs that index a table (an embedding gather, index_select):
    input position -> the valid range [low, high) of its values.

    torch-mlir lowers such a gather to a ``linalg.generic`` whose body does
    ``tensor.extract %table[index_cast(%in), …]`` with %in an element of the
    input; the range is the table's size along that dimension (the smallest over
    every table an input indexes). IREE drops the ``cf.assert`` torch-mlir puts
    beside it, so an index out of range reads past the table; callers check
    inputs against these ranges before running the module."""
    from torch_mlir import ir

    args = list(program.body.arguments)
    ranges: dict[int, tuple[int, int]] = {}
    for op in program.ops():
        if op.name != "linalg.generic":
            continue
        gen = op.opview
        block = gen.regions[0].blocks[0]
        n_in = len(gen.inputs)
        for inner in block.operations:
            if inner.operation.name != "tensor.extract":
                continue
            table_shape = ir.RankedTensorType(inner.operands[0].type).shape
            for dim, index in enumerate(list(inner.operands)[1:]):
                cast = index.owner
                if not isinstance(cast, (ir.OpView, ir.Operation)) or cast.operation.name not in ("arith.index_cast", "arith.index_castui"):
                    continue
                src = cast.operation.operands[0]
                if not isinstance(src.owner, ir.Block) or src.owner != block:
                    continue
                pos = ir.BlockArgument(src).arg_number
                if pos >= n_in:
                    continue
                value = _through_views(gen.inputs[pos])
                if value is None:
                    continue
                which = next((i for i, a in enumerate(args) if a == value), None)
                if which is None or table_shape[dim] < 0:
                    continue
                high = min(table_shape[dim], ranges.get(which, (0, table_shape[dim]))[1])
                ranges[which] = (0, high)
    return ranges


def _through_views(value: ir.Value) -> ir.Value | None:
    """``value`` traced back through reshapes to a function argument, else None."""
    from torch_mlir import ir

    while True:
        owner = value.owner
        if isinstance(owner, ir.Block):
            return value
        op = owner.operation
        if op.name not in _INDEX_VIEWS:
            return None
        value = op.operands[0]


def check_index_ranges(arrays: Sequence[np.ndarray], ranges: dict[int, tuple[int, int]], what: str) -> None:
    """One InputError line naming the first input value outside its table's range."""
    for i, (low, high) in sorted(ranges.items()):
        if i >= len(arrays):
            continue
        a = np.asarray(arrays[i])
        if not np.issubdtype(a.dtype, np.integer) or a.size == 0:
            continue
        bad = np.flatnonzero((a < low) | (a >= high))
        if bad.size:
            where = np.unravel_index(bad[0], a.shape)
            raise InputError(
                f"{what}: input {i} indexes a table of {high} rows, so its values must be in [{low}, {high}); "
                f"found {a.flat[bad[0]]} at {list(map(int, where))} ({bad.size} value(s) out of range)"
            )
