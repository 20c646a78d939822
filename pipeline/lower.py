"""Lower a loaded model to linalg on tensors with torch-mlir's FX importer.

Each parameter becomes ``arith.constant dense_resource<FQN>``: the importer's
``resolve_literal`` hook receives the parameter tensor itself (no name), so we
map ``id(tensor)`` to its key in the exported program's state_dict/constants.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Any, Iterator

import numpy as np

from optc.errors import LowerError, first_line
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
def _captured_stderr() -> Iterator[_Captured]:
    """MLIR prints its diagnostics (the op that failed) to fd 2, not into the
    exception; capture them so the error can name the op and nothing leaks."""
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            captured.text = buf.read()


def unlowerable_op(message: str) -> str | None:
    for rx in _ILLEGAL_OP_RES:
        m = rx.search(message)
        if m:
            return m.group(1)
    return None


def lower(model: Model) -> Program:
    """torch.export -> decompositions -> torch-mlir -> linalg on tensors."""
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
    diagnostics = _Captured()
    try:
        with _captured_stderr() as diagnostics:
            module = fx.export_and_import(ep, output_type="linalg-on-tensors", hooks=hooks, decomposition_table={})
    except Exception as e:
        text = diagnostics.text + "\n" + str(e)
        op = unlowerable_op(text)
        if op:
            raise LowerError(f"cannot lower op {op} of {model.source} to linalg (torch-mlir has no lowering for it)") from None
        raise LowerError(f"lowering {model.source} to linalg failed: {first_line(e)}") from None
    inputs = tuple(np.ascontiguousarray(t.detach().cpu().numpy()) for t in model.example_inputs)
    return Program(module=module, params=dict(hooks.params), example_inputs=inputs)
