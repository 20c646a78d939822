"""The program: a linalg-on-tensors MLIR module plus its named parameters.

Every weight is an ``arith.constant dense_resource<FQN>``; its array lives in
``Program.params``. This module gives methods one view of the weighted ops
(matmul, batch_matmul, convolutions) with their parameter, role, shapes and
MACs, plus the small builders that rewrites use, so that no method re-implements
matching or counting.

FLOPs here are multiply-accumulates (MACs), the convention of the pruning and
factorization literature (ResNet-50 = 4.1 GFLOPs).
"""

from __future__ import annotations

import dataclasses

import io
import re
from dataclasses import dataclass, field
from functools import cached_property
from math import prod
from typing import Any, Callable, Iterator

import numpy as np
from torch_mlir import ir
from torch_mlir.dialects import arith

from optc import storage
from optc.api import LayerStructure, Skip, SkipReason
from optc.builder import Builder, as_value, shape_of  # noqa: F401  (as_value, shape_of: re-exported for targets)

# Ops that read a weight and do the heavy work; value = how to find the reduction size.
CONTRACTIONS: dict[str, Callable[[list[tuple[int, ...]]], int]] = {
    "linalg.matmul": lambda s: s[0][-1],
    "linalg.batch_matmul": lambda s: s[0][-1],
    "linalg.conv_2d_nchw_fchw": lambda s: prod(s[1][1:]),
    "linalg.conv_2d_nhwc_hwcf": lambda s: prod(s[1][:3]),
    "linalg.conv_2d_ngchw_gfchw": lambda s: prod(s[1][2:]),
    "linalg.depthwise_conv_2d_nchw_chw": lambda s: prod(s[1][1:]),
    "linalg.depthwise_conv_2d_nhwc_hwc": lambda s: prod(s[1][:2]),
}
# Ops that only move or broadcast a weight on its way to a contraction.
_VIEW_OPS = ("linalg.transpose", "tensor.expand_shape", "tensor.collapse_shape", "linalg.broadcast", "linalg.generic", "arith.extf")
# Side-effect-free ops that may be erased once nothing uses them.
_PURE_PREFIXES = ("arith.", "linalg.", "tensor.", "math.")

_RESOURCE_RE = re.compile(r'dense_resource<"?([^">]+)"?>')

KIND_OF_OP = {
    "linalg.matmul": "matmul",
    "linalg.batch_matmul": "batch_matmul",
    "linalg.conv_2d_nchw_fchw": "conv2d",
    "linalg.conv_2d_nhwc_hwcf": "conv2d",
    "linalg.conv_2d_ngchw_gfchw": "grouped_conv2d",
    "linalg.depthwise_conv_2d_nchw_chw": "depthwise_conv2d",
    "linalg.depthwise_conv_2d_nhwc_hwc": "depthwise_conv2d",
}


def op_macs(op: ir.Operation) -> int:
    """Multiply-accumulates of one contraction op: output elements × reduction size."""
    shapes = [shape_of(v) for v in op.operands]
    return prod(shape_of(op.results[0])) * CONTRACTIONS[op.name](shapes)


def resource_name(attr: ir.Attribute) -> str | None:
    """The blob name of a ``dense_resource<NAME>`` attribute (from its short printed form)."""
    text = str(attr)  # the short form; the bindings offer no name accessor
    if not text.startswith("dense_resource<"):
        return None
    m = _RESOURCE_RE.match(text)
    return m.group(1) if m else None


def reassociation(op: ir.Operation) -> list[list[int]]:
    """The dim groups of a ``tensor.collapse_shape`` / ``tensor.expand_shape``."""
    return [[ir.IntegerAttr(d).value for d in ir.ArrayAttr(g)] for g in ir.ArrayAttr(op.attributes["reassociation"])]


def _is_dim(expr: Any) -> bool:
    try:
        ir.AffineDimExpr(expr)
        return True
    except (ValueError, TypeError):
        return False


def _generic_view(op: ir.Operation) -> tuple[str, Any] | None:
    """A ``linalg.generic`` that only copies/broadcasts/permutes its single input,
    or one that dequantizes a narrow stored weight (``optc.storage.dequantize``)."""
    gen = op.opview
    dequant = storage.dequantize_step(op)
    if dequant is not None:
        return dequant
    if len(gen.inputs) != 1 or len(gen.outputs) != 1:
        return None
    body = gen.regions[0].blocks[0]
    ops = list(body.operations)
    if len(ops) != 1 or ops[0].name != "linalg.yield" or ops[0].operands[0] != body.arguments[0]:
        return None
    maps = [ir.AffineMapAttr(a).value for a in gen.indexing_maps]
    out_map = maps[1]
    if not out_map.is_permutation or list(out_map.results) != list(ir.AffineMap.get_identity(out_map.n_dims, context=op.context).results):
        return None
    dims = [ir.AffineDimExpr(r).position for r in maps[0].results if _is_dim(r)]
    if len(dims) != len(maps[0].results):
        return None
    return "generic_broadcast", (dims, shape_of(op.results[0]))


def _view_step(op: ir.Operation) -> tuple[str, Any] | None:
    name = op.name
    if name == "linalg.transpose":
        return "transpose", list(ir.DenseI64ArrayAttr(op.attributes["permutation"]))
    if name in ("tensor.expand_shape", "tensor.collapse_shape"):
        return "reshape", shape_of(op.results[0])
    if name == "linalg.broadcast":
        return "broadcast", (list(ir.DenseI64ArrayAttr(op.attributes["dimensions"])), shape_of(op.results[0]))
    if name == "linalg.generic":
        return _generic_view(op)
    if name == "arith.extf":  # a narrow stored weight widened where it is used
        return "cast", str(ir.RankedTensorType(op.results[0].type).element_type)
    return None


def apply_view(array: np.ndarray, chain: list[tuple[str, Any]]) -> np.ndarray:
    """Apply a weight's view chain (param array -> the operand the op reads): a
    view of ``array`` where the steps allow."""
    for kind, arg in chain:
        if kind == "transpose":
            array = array.transpose(arg)
        elif kind == "reshape":
            array = array.reshape(arg)
        elif kind == "broadcast":
            added, shape = arg
            kept = [d for d in range(len(shape)) if d not in added]
            array = np.broadcast_to(np.expand_dims(array, tuple(added)), shape) if kept else array
        elif kind == "generic_broadcast":
            dims, shape = arg
            order = sorted(range(len(dims)), key=lambda i: dims[i])
            a = array.transpose(order)
            present = sorted(dims)
            a = np.expand_dims(a, tuple(d for d in range(len(shape)) if d not in present))
            array = np.broadcast_to(a, shape)
        elif kind == "cast":
            array = array.astype(_NUMPY_OF_MLIR[arg])
        elif kind == "dequant":  # levels only: the scales live in their own constant
            array = storage.stored_levels(array, *arg)
    return array


_NUMPY_OF_MLIR = {"f32": np.float32, "f16": np.float16, "f64": np.float64}


def unapply_view(operand: np.ndarray, chain: list[tuple[str, Any]], param_shape: tuple[int, ...]) -> np.ndarray:
    """Map an array shaped like the op's operand back to the parameter's layout
    (the inverse of :func:`apply_view`; broadcasts take their first copy)."""
    shapes = [tuple(param_shape)]
    for step in chain:
        shapes.append(apply_view(np.broadcast_to(np.int8(0), shapes[-1]), [step]).shape)  # shapes only: no memory
    array = operand
    for (kind, arg), before in zip(reversed(chain), reversed(shapes[:-1])):
        if kind == "transpose":
            array = array.transpose(np.argsort(arg))
        elif kind == "reshape":
            array = array.reshape(before)
        elif kind == "broadcast":
            added, _ = arg
            array = array[tuple(0 if d in added else slice(None) for d in range(array.ndim))]
        elif kind == "generic_broadcast":
            dims, _ = arg
            present = sorted(dims)
            array = array[tuple(slice(None) if d in present else 0 for d in range(array.ndim))]
            order = sorted(range(len(dims)), key=lambda i: dims[i])
            array = array.transpose(np.argsort(order))
        elif kind == "dequant":
            raise ValueError("a quantized weight has no float parameter layout to map back to")
        # "cast": the reference keeps the widened dtype the op computes with
    return np.ascontiguousarray(array.reshape(param_shape))


@dataclass
class WeightedOp:
    """A contraction whose operand ``operand_index`` traces back to a named parameter."""

    op: ir.Operation
    kind: str
    param: str
    layer: str
    operand_index: int
    chain: list[tuple[str, Any]]
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]  # as the op reads it
    output_shape: tuple[int, ...]
    macs: int

    @property
    def batch_shared(self) -> bool:
        """A batch_matmul whose weight is one matrix broadcast over the batch."""
        return self.kind == "batch_matmul" and bool(self.chain) and self.chain[-1][0] in ("broadcast", "generic_broadcast")

    @property
    def groups(self) -> int:
        """Independent channel groups: 1 for a dense op, G for a grouped conv, C for a depthwise one."""
        if self.kind == "grouped_conv2d":
            return self.weight_shape[0]
        if self.kind == "depthwise_conv2d":
            return self.output_shape[1]
        return 1

    def matrix_form(self) -> Skip | None:
        """Why this op's weight has no out×in matrix view, or None when it has one:
        a linear/LSTM matmul ``x·Wᵀ`` (the weight as right operand, shared over a
        batch), an NCHW convolution as OC×(IC·KH·KW), a grouped one as
        OC×(IC/G·KH·KW) and a depthwise one as C×(KH·KW) (each row sees only its
        group's inputs: ``groups``)."""
        if self.kind in ("conv2d", "grouped_conv2d", "depthwise_conv2d"):
            if self.op.name in _MATRIX_CONVS:
                return None
            return Skip(SkipReason.NO_MATRIX_VIEW, f"{self.op.name} (only NCHW convolutions have a matrix view)")
        if self.operand_index != 1:
            return Skip(SkipReason.NO_MATRIX_VIEW, "the weight is the left operand of its matmul")
        if self.kind == "batch_matmul" and not self.batch_shared:
            return Skip(SkipReason.NO_MATRIX_VIEW, "a batch_matmul with a different weight per batch")
        return None

    @property
    def conv(self) -> bool:
        return self.kind in ("conv2d", "grouped_conv2d", "depthwise_conv2d")

    @property
    def out_channels(self) -> int:
        """Rows of the matrix view."""
        if self.kind == "grouped_conv2d":
            return self.weight_shape[0] * self.weight_shape[1]
        if self.conv:
            return self.weight_shape[0] if self.op.name in _MATRIX_CONVS else self.weight_shape[-1]
        return self.weight_shape[-1]

    def matrix(self, param: np.ndarray) -> np.ndarray:
        """The weight as an out×in matrix (rows = outputs), from the parameter
        array: a read-only view of it where the view chain allows (a linear
        layer's, a convolution's), so that reading a big weight copies nothing."""
        operand = apply_view(param, self.chain)
        matrix = operand.reshape(self.out_channels, -1) if self.conv else (operand[0] if self.batch_shared else operand).T
        if np.shares_memory(matrix, param):
            matrix = matrix.view()
            matrix.flags.writeable = False
        return matrix

    def from_matrix(self, matrix: np.ndarray, param_shape: tuple[int, ...]) -> np.ndarray:
        """The inverse of :meth:`matrix`: an out×in matrix back in the parameter's layout."""
        if self.conv:
            operand = matrix.reshape(self.weight_shape)
        elif self.batch_shared:
            operand = np.broadcast_to(matrix.T, self.weight_shape)
        else:
            operand = matrix.T
        return unapply_view(operand, self.chain, param_shape)  # it ends contiguous: one copy at most


_MATRIX_CONVS = ("linalg.conv_2d_nchw_fchw", "linalg.conv_2d_ngchw_gfchw", "linalg.depthwise_conv_2d_nchw_chw")


@dataclass
class LayerStats:
    """Per-layer totals: a layer is a weight parameter of the original model."""

    layer: str
    kind: str
    ops: int
    params: int
    macs: int
    weight_shape: tuple[int, ...]


@dataclass
class Program:
    """An MLIR module (linalg on tensors) with named parameters."""

    module: ir.Module
    params: dict[str, np.ndarray]
    example_inputs: tuple[np.ndarray, ...]
    origin: dict[str, str] = field(default_factory=dict)  # param -> the original layer it came from
    layer_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # original parameter shapes
    func_name: str = "main"
    # Structure a method imposed on a layer, for the methods after it (bcr's
    # blocks, which admm then solves for).
    structures: dict[str, LayerStructure] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, array in self.params.items():
            self.layer_shapes.setdefault(name, tuple(array.shape))

    def rewritten(self, param: str) -> bool:
        """True when ``param`` is not its layer's original array (a factor, a narrower copy …)."""
        return self.layer_of(param) != param

    # ------------------------------------------------------------------ structure
    @property
    def context(self) -> ir.Context:
        return self.module.context

    @property
    def func(self) -> ir.Operation:
        for op in self.module.body.operations:
            if op.operation.name == "func.func" and ir.StringAttr(op.attributes["sym_name"]).value == self.func_name:
                return op.operation
        raise KeyError(f"no function {self.func_name!r} in module")

    @property
    def function_type(self) -> ir.FunctionType:
        """The entry function's type (its inputs and results)."""
        return ir.FunctionType(ir.TypeAttr(self.func.attributes["function_type"]).value)

    @property
    def body(self) -> ir.Block:
        return self.func.regions[0].blocks[0]

    def ops(self) -> Iterator[ir.Operation]:
        for op in self.body.operations:
            yield op.operation

    def layer_of(self, param: str) -> str:
        return self.origin.get(param, param)

    def trace_param(self, value: ir.Value) -> tuple[str, list[tuple[str, Any]]] | None:
        """Follow a value back through view ops to a named constant: (param, chain)."""
        chain: list[tuple[str, Any]] = []
        while True:
            owner = value.owner
            if not isinstance(owner, ir.OpView) and not isinstance(owner, ir.Operation):
                return None  # a block argument: an input of the model
            op = owner.operation
            if op.name == "arith.constant":
                name = resource_name(op.attributes["value"])
                if name is None or name not in self.params:
                    return None
                return name, list(reversed(chain))
            if op.name not in _VIEW_OPS:
                return None
            step = _view_step(op)
            if step is None:
                return None
            chain.append(step)
            value = op.operands[0]

    def weighted_ops(self) -> list[WeightedOp]:
        found = []
        for op in self.ops():
            if op.name not in CONTRACTIONS:
                continue
            n_in = len(op.opview.inputs)
            for idx in range(n_in):
                traced = self.trace_param(op.operands[idx])
                if traced is None:
                    continue
                param, chain = traced
                found.append(
                    WeightedOp(
                        op=op,
                        kind=KIND_OF_OP[op.name],
                        param=param,
                        layer=self.layer_of(param),
                        operand_index=idx,
                        chain=chain,
                        input_shape=shape_of(op.operands[1 - idx]) if n_in == 2 else (),
                        weight_shape=shape_of(op.operands[idx]),
                        output_shape=shape_of(op.results[0]),
                        macs=op_macs(op),
                    )
                )
                break
        return found

    def has_narrow_weights(self) -> bool:
        """Whether some weight is stored narrow and widened where it is used."""
        return storage.narrow_weights(self)

    def layers(self, selected: Callable[[str], bool] = lambda layer: True) -> list["Layer"]:
        """A :class:`Layer` per weight layer whose name is ``selected``, in program
        order, with its uses and why it cannot be rewritten through one out×in
        matrix view (``Layer.problem``)."""
        uses: dict[str, list[WeightedOp]] = {}
        for w in self.weighted_ops():
            if selected(w.layer):
                uses.setdefault(w.layer, []).append(w)
        return [Layer(self, name, ops) for name, ops in uses.items()]

    def contraction_macs(self) -> int:
        """MACs of every contraction, weighted or not (attention's activation matmuls count too)."""
        return sum(self.contraction_sizes())

    def contraction_sizes(self) -> list[int]:
        """The MACs of each contraction, in program order."""
        return [op_macs(op) for op in self.ops() if op.name in CONTRACTIONS]

    def constant_op(self, param: str) -> ir.Operation:
        """The ``arith.constant`` that holds ``param``."""
        for op in self.ops():
            if op.name == "arith.constant" and resource_name(op.attributes["value"]) == param:
                return op
        raise KeyError(f"no constant holds parameter {param!r}")

    def callees(self) -> list[str]:
        """The functions this program's function calls (a module holding variants
        chosen at run time, e.g. drnet's resolutions), in order of first call."""
        names: list[str] = []
        for op in walk_nested(self.func):
            if op.name == "func.call":
                callee = ir.FlatSymbolRefAttr(op.attributes["callee"]).value
                if callee not in names:
                    names.append(callee)
        return names

    def function(self, name: str) -> "Program":
        """A view of function ``name`` of the same module (shared params, origins and
        structures: a rewrite through the view changes this program)."""
        return dataclasses.replace(self, func_name=name)

    def variants(self) -> list["Program"]:
        """The functions that hold the model's layers: this one, or, in a module that
        picks a variant per input at run time (drnet), a view of each function it calls."""
        callees = self.callees()
        return [self.function(n) for n in callees] if callees else [self]

    def largest_variant(self) -> "Program":
        """The variant with the most contraction MACs: the costliest function one call may run."""
        return max(self.variants(), key=lambda p: p.contraction_macs())

    def referenced_params(self) -> list[str]:
        """Parameters some function of the module reads (variants share one copy)."""
        names = []
        for op in walk_nested(self.module.operation):
            if op.name == "arith.constant":
                name = resource_name(op.attributes["value"])
                if name is not None and name in self.params:
                    names.append(name)
        return names

    def layer_stats(self) -> dict[str, LayerStats]:
        """MACs and parameter counts per original weight layer — the one counter
        that inspect, reports and bench share."""
        stats: dict[str, LayerStats] = {}
        seen_params: dict[str, set[str]] = {}
        for w in self.weighted_ops():
            s = stats.get(w.layer)
            if s is None:
                s = stats[w.layer] = LayerStats(w.layer, w.kind, 0, 0, 0, self.layer_shapes.get(w.layer, self.params[w.param].shape))
                seen_params[w.layer] = set()
            s.ops += 1
            s.macs += w.macs
            if w.param not in seen_params[w.layer]:
                seen_params[w.layer].add(w.param)
                s.params += int(self.params[w.param].size)
        return stats

    def total_params(self) -> int:
        return sum(int(self.params[n].size) for n in set(self.referenced_params()))

    def param_bytes(self) -> int:
        return sum(int(self.params[n].nbytes) for n in set(self.referenced_params()))

    # ------------------------------------------------------------------ building
    def constant(self, name: str, array: np.ndarray, origin: str | None = None) -> ir.Value:
        """A new named parameter as ``arith.constant dense_resource<name>`` at the function entry."""
        array = np.ascontiguousarray(array)
        with self.context, ir.Location.unknown():
            etype = _element_type(array.dtype)
            ttype = ir.RankedTensorType.get(list(array.shape), etype)
            attr = self._blob_elsewhere(name, array)
            if attr is None:
                attr = ir.DenseResourceElementsAttr.get_from_buffer(array, name, ttype)
            real = resource_name(attr) or name  # MLIR renames a clashing blob name
            with ir.InsertionPoint.at_block_begin(self.body):
                value = arith.ConstantOp(ttype, attr).result
        self.params[real] = array
        self.origin[real] = origin if origin is not None else name
        return value

    def _blob_elsewhere(self, name: str, array: np.ndarray) -> ir.Attribute | None:
        """The blob of parameter ``name`` (or of MLIR's renamed ``name_N``) when another
        function of the module holds it with the same array: a method rewriting each
        variant of a multi-variant module (drnet, --dynamic-batch) makes the same
        constants in each, and they share one copy."""
        mine = set(self.func_params())
        renamed = re.compile(re.escape(name) + r"(_\d+)?")
        for held_name, held in self.params.items():
            if held_name in mine or not renamed.fullmatch(held_name):
                continue  # a second constant of one function keeps its own name, as before
            if held.dtype != array.dtype or held.shape != array.shape or not np.array_equal(held, array):
                continue
            for op in walk_nested(self.module.operation):
                if op.name == "arith.constant" and resource_name(op.attributes["value"]) == held_name:
                    return op.attributes["value"]
        return None

    def func_params(self) -> list[str]:
        """Parameters this function (not the rest of the module) reads."""
        return [n for op in self.ops() if op.name == "arith.constant"
                and (n := resource_name(op.attributes["value"])) is not None and n in self.params]

    def at(self, op: ir.Operation) -> Builder:
        """A builder inserting before ``op`` (use as a context manager)."""
        return Builder(self, op)

    def first_user(self, value: ir.Value) -> ir.Operation:
        """The earliest op in the function body that uses ``value``."""
        users = [u.owner.operation for u in value.uses]
        return next(op for op in self.ops() if any(op == u for u in users))

    def replace(self, op: ir.Operation, value: ir.Value) -> None:
        """Replace ``op``'s single result by ``value``, erase it, and drop dead producers."""
        op.results[0].replace_all_uses_with(value)
        op.erase()
        self.erase_dead()

    def erase_dead(self) -> None:
        changed = True
        while changed:
            changed = False
            for op in reversed(list(self.ops())):
                if op.name.startswith(_PURE_PREFIXES) and op.results and all(
                    not list(r.uses) for r in op.results
                ):
                    op.erase()
                    changed = True
        live = set(self.referenced_params())
        for name in [n for n in self.params if n not in live]:
            del self.params[name]
            self.origin.pop(name, None)

    # ------------------------------------------------------------------ output
    def to_bytecode(self) -> bytes:
        """The module as MLIR bytecode, blobs included — what IREE compiles."""
        buf = io.BytesIO()
        self.module.operation.write_bytecode(buf)
        return buf.getvalue()

    def to_text(self, elide: bool = True) -> str:
        if elide:
            return self.module.operation.get_asm(large_elements_limit=16, print_generic_op_form=False)
        return str(self.module)

    def clone(self) -> "Program":
        """An independent copy (a new context), so a method can rewrite without
        touching this one. The weights are not copied: the module travels as
        bytecode with each parameter's blob replaced by a splat, and the copy's
        constants are bound to the same (read-only) arrays again."""
        with self.context, ir.Location.unknown():
            shell = self.module.operation.clone()  # same context: attributes shared, nothing copied
            for op in walk_nested(shell):
                name = _param_blob(op, self.params)
                if name is not None:
                    ttype = ir.RankedTensorType(op.results[0].type)
                    op.attributes["value"] = ir.DenseElementsAttr.get_splat(ttype, _zero(ttype.element_type))
                    op.attributes[_BLOB_MARK] = ir.StringAttr.get(name)
        buf = io.BytesIO()
        shell.write_bytecode(buf)
        module = ir.Module.parse(buf.getvalue(), context=_torch_mlir_context())
        with module.context:
            for op in walk_nested(module.operation):
                if _BLOB_MARK in op.attributes:
                    name = ir.StringAttr(op.attributes[_BLOB_MARK]).value
                    del op.attributes[_BLOB_MARK]
                    op.attributes["value"] = ir.DenseResourceElementsAttr.get_from_buffer(self.params[name], name, op.results[0].type)
        return Program(
            module=module,
            params=dict(self.params),
            example_inputs=self.example_inputs,
            origin=dict(self.origin),
            layer_shapes=dict(self.layer_shapes),
            func_name=self.func_name,
            structures=dict(self.structures),
        )

    def verify(self) -> None:
        if not self.module.operation.verify():
            raise RuntimeError("module does not verify")


@dataclass
class Layer:
    """One weight layer of the model (an original parameter, by its FQN) as a
    method sees it: the ops that read it, its out×in matrix view, and why it
    cannot be rewritten through that view (``problem``)."""

    program: Program
    name: str
    uses: list[WeightedOp]

    @property
    def params(self) -> list[str]:
        """The parameters holding the layer now (one unless a method rewrote it)."""
        return list(dict.fromkeys(w.param for w in self.uses))

    @property
    def param(self) -> str:
        return self.uses[0].param

    @property
    def weight(self) -> np.ndarray:
        return self.program.params[self.param]

    @property
    def kind(self) -> str:
        return self.uses[0].kind

    @property
    def groups(self) -> int:
        return self.uses[0].groups

    @property
    def macs(self) -> int:
        return sum(w.macs for w in self.uses)

    @cached_property
    def rewritten(self) -> bool:
        """Whether an earlier method replaced the layer's original array (as the layer was found)."""
        p = self.program
        return len(self.params) > 1 or p.rewritten(self.param) or p.params[self.param].shape != p.layer_shapes.get(self.name)

    @property
    def structure(self) -> LayerStructure | None:
        """The structure an earlier method left on this layer, if any."""
        return self.program.structures.get(self.name)

    @property
    def problem(self) -> Skip | None:
        """Why the layer cannot be rewritten through one out×in matrix view, or None."""
        if self.rewritten:
            return Skip(SkipReason.ALREADY_REWRITTEN)
        for w in self.uses:
            reason = w.matrix_form()
            if reason:
                return reason
        if len({repr(w.chain) for w in self.uses}) != 1:
            return Skip(SkipReason.MIXED_VIEWS)
        return None

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the matrix view."""
        w = self.uses[0]
        out = w.out_channels
        return out, int(np.prod(w.weight_shape)) // (out * w.weight_shape[0] if w.batch_shared else out)

    @property
    def out_dim(self) -> int:
        return self.shape[0]

    @property
    def in_dim(self) -> int:
        return self.shape[1]

    def matrix(self) -> np.ndarray:
        """The weight as an out×in matrix (for a structured layer: the dense
        weights its structure was chosen on)."""
        if self.structure is not None and self.rewritten:
            return self.structure.matrix
        return self.uses[0].matrix(self.weight)

    def from_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """An out×in matrix in the original parameter's layout."""
        if self.structure is not None and self.rewritten:
            return self.structure.to_param(matrix)
        return self._view_to_param(matrix)

    def _view_to_param(self, matrix: np.ndarray) -> np.ndarray:
        return self.uses[0].from_matrix(matrix, self.program.layer_shapes[self.name])

    def layout(self) -> storage.Layout:
        """How the parameter lays out the out×in matrix (for ``storage.store``)."""
        return storage.Layout(self._view_to_param)


_BLOB_MARK = "optc.blob"  # marks a parameter constant while a module is cloned


def _param_blob(op: ir.Operation, params: dict[str, np.ndarray]) -> str | None:
    """The parameter an ``arith.constant dense_resource<NAME>`` holds, when NAME is one of ``params``."""
    if op.name != "arith.constant" or "value" not in op.attributes:
        return None
    attr = op.attributes["value"]
    try:
        ir.DenseResourceElementsAttr(attr)  # a cast: str() of a dense literal would print all of it
    except ValueError:
        return None
    name = resource_name(attr)
    return name if name in params else None


def _zero(etype: ir.Type) -> ir.Attribute:
    try:
        return ir.IntegerAttr.get(ir.IntegerType(etype), 0)
    except ValueError:  # not an integer type: a float one
        return ir.FloatAttr.get(etype, 0.0)


def walk_nested(root: ir.Operation) -> Iterator[ir.Operation]:
    """Every op nested in ``root`` (regions of scf.if, other functions …), pre-order."""
    for region in root.regions:
        for block in region.blocks:
            for op in block.operations:
                yield op.operation
                yield from walk_nested(op.operation)


def operands_from_outside(op: ir.Operation) -> list[ir.Value]:
    """``op``'s operands plus the values its regions capture from above (a
    gather's ``tensor.extract`` reads a tensor defined outside its generic)."""
    values = list(op.operands)
    inner: set[Any] = set()
    for nested in walk_nested(op):
        inner.update(nested.results)
        for region in nested.regions:
            for block in region.blocks:
                inner.update(block.arguments)
        values.extend(nested.operands)
    for region in op.regions:
        for block in region.blocks:
            inner.update(block.arguments)
    return [v for v in values if v not in inner]


def _torch_mlir_context() -> ir.Context:
    """A fresh context that knows every dialect torch-mlir's linalg output can hold.
    A bare ``ir.Context()`` has only upstream dialects: ``tm_tensor`` (sort, scatter,
    topk …) is registered by torch-mlir's passes, so one of them is run on an empty
    module to load it, as the lowering context had it loaded."""
    from torch_mlir import passmanager
    from torch_mlir.dialects import torch as torch_d

    ctx = ir.Context()
    torch_d.register_dialect(ctx)
    with ctx, ir.Location.unknown():
        passmanager.PassManager.parse("builtin.module(func.func(convert-torch-to-tmtensor))").run(ir.Module.create().operation)
    return ctx


class LayerRewriter:
    """What ``LayerMethod.rewrite`` builds with: constants named after the layer,
    a builder at each use, the one way to store a weight, and publishing the
    structure the rewrite imposed."""

    def __init__(self, program: Program, layer: Layer, method: str):
        self.program = program
        self.layer = layer
        self.method = method
        self._published: LayerStructure | None = None

    def constant(self, suffix: str, array: np.ndarray) -> ir.Value:
        """A new parameter ``LAYER.SUFFIX`` that belongs to the layer."""
        return self.program.constant(f"{self.layer.name}.{suffix}", array, origin=self.layer.name)

    def each_use(self, build: Callable[[WeightedOp, Builder], ir.Value], uses: list[WeightedOp] | None = None) -> None:
        """Replace every use of the weight (or only ``uses``) by what ``build(use, builder)`` returns (built before it)."""
        for w in self.layer.uses if uses is None else uses:
            with self.program.at(w.op) as b:
                value = build(w, b)
            self.program.replace(w.op, value)

    def factor_uses(self, a: np.ndarray, b: np.ndarray, tag: str) -> tuple[ir.Value, ir.Value]:
        """Every use ``init + x·M`` becomes ``init + (x·A)·B`` (M ≈ A·B, A in×r, B r×out),
        with one pair of constants ``LAYER.TAG_in`` / ``LAYER.TAG_out`` for all uses (returned)."""
        a_val, b_val = self.constant(f"{tag}_in", a), self.constant(f"{tag}_out", b)

        def two_matmuls(w: WeightedOp, build: Builder) -> ir.Value:
            x, init = w.op.operands[0], w.op.operands[2]
            t = build.linear(x, a_val, build.zeros(shape_of(x)[:-1] + (a.shape[1],), like=x))
            return build.linear(t, b_val, init)

        self.each_use(two_matmuls)
        return a_val, b_val

    def store(self, weights: "np.ndarray | storage.Quantized", *, suffix: str, layout: storage.Layout | None = None, param: str | None = None, dtype: Any = np.float32) -> storage.Stored:
        """Replace the weight's constant (or ``param``) by ``weights`` in ``layout``
        (default: the parameter's own, from an out×in matrix), via ``storage.store``."""
        return storage.store(
            self.program, param or self.layer.param, weights, name=f"{self.layer.name}.{suffix}",
            origin=self.layer.name, layout=layout or self.layer.layout(), dtype=dtype,
        )

    def publish(self, structure: Any, matrix: np.ndarray, param: str, layout: storage.Layout) -> None:
        """Leave ``structure`` (an ``optc.structures`` object) for later methods: the
        weights live in ``param`` laid out by ``layout``; ``matrix`` is what it was chosen on."""
        if self.layer.structure is not None:  # re-structured in the earlier structure's matrix space
            self._published = LayerStructure(self.method, structure, matrix, param, layout, self.layer.structure.to_param)
            return
        to_param = self.layer._view_to_param
        inputs = structure.input_map()
        if inputs is not None:  # the structured matrix reads transformed inputs: its weight is matrix·Tᵀ
            to_layer = to_param
            to_param = lambda m: to_layer((m.astype(np.float64) @ inputs.T).astype(np.float32))  # noqa: E731
        self._published = LayerStructure(self.method, structure, matrix, param, layout, to_param)

    def publish_structure(self) -> None:
        if self._published is not None:
            self.program.structures[self.layer.name] = self._published


def _element_type(dtype: np.dtype) -> ir.Type:
    dtype = np.dtype(dtype)
    table = {
        "float32": ir.F32Type.get,
        "float16": ir.F16Type.get,
        "float64": ir.F64Type.get,
        "int8": lambda: ir.IntegerType.get_signless(8),
        "uint8": lambda: ir.IntegerType.get_signless(8),  # packed nibbles (int4 pairs)
        "int16": lambda: ir.IntegerType.get_signless(16),
        "int32": lambda: ir.IntegerType.get_signless(32),
        "int64": lambda: ir.IntegerType.get_signless(64),
    }
    if dtype.name not in table:
        raise TypeError(f"no MLIR element type for {dtype}")
    return table[dtype.name]()
