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

import io
import re
from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable, Iterator

import numpy as np
from torch_mlir import ir
from torch_mlir.dialects import arith, linalg, tensor

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
DEQUANT_TAG = "optc.dequantize"  # marks the generic that widens a narrow stored weight
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


def shape_of(value: ir.Value) -> tuple[int, ...]:
    return tuple(ir.RankedTensorType(value.type).shape)


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


def _is_dim(expr: Any) -> bool:
    try:
        ir.AffineDimExpr(expr)
        return True
    except (ValueError, TypeError):
        return False


def _generic_view(op: ir.Operation) -> tuple[str, Any] | None:
    """A ``linalg.generic`` that only copies/broadcasts/permutes its single input,
    or one that dequantizes a narrow stored weight (built by ``_Builder.dequantize``)."""
    gen = op.opview
    if DEQUANT_TAG in op.attributes:
        bits, _, axis = ir.StringAttr(op.attributes[DEQUANT_TAG]).value.partition(":")
        return "dequant", (int(bits), int(axis) if axis else None, shape_of(op.results[0]))
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
    """Apply a weight's view chain (param array -> the operand the op reads)."""
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
            bits, axis, shape = arg
            array = (unpack_int4(array, axis) if bits == 4 else array).astype(np.float32).reshape(shape)
    return np.ascontiguousarray(array)


_NUMPY_OF_MLIR = {"f32": np.float32, "f16": np.float16, "f64": np.float64}


def unapply_view(operand: np.ndarray, chain: list[tuple[str, Any]], param_shape: tuple[int, ...]) -> np.ndarray:
    """Map an array shaped like the op's operand back to the parameter's layout
    (the inverse of :func:`apply_view`; broadcasts take their first copy)."""
    shapes = [tuple(param_shape)]
    for step in chain:
        shapes.append(apply_view(np.empty(shapes[-1], dtype=np.int8), [step]).shape)
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

    def matrix_form(self) -> str | None:
        """Why this op's weight has no out×in matrix view, or None when it has one:
        a linear/LSTM matmul ``x·Wᵀ`` (the weight as right operand, shared over a
        batch) or an NCHW convolution viewed as OC×(IC·KH·KW)."""
        if self.kind == "conv2d":
            return None if self.op.name == "linalg.conv_2d_nchw_fchw" else f"{self.op.name} (only NCHW convolutions)"
        if self.kind not in ("matmul", "batch_matmul"):
            return f"{self.kind} (no out×in matrix view)"
        if self.operand_index != 1:
            return "the weight is the left operand of its matmul"
        if self.kind == "batch_matmul" and not self.batch_shared:
            return "a batch_matmul with a different weight per batch"
        return None

    def matrix(self, param: np.ndarray) -> np.ndarray:
        """The weight as an out×in matrix (rows = outputs), from the parameter array."""
        operand = apply_view(param, self.chain)
        if self.kind == "conv2d":
            return operand.reshape(operand.shape[0], -1)
        return (operand[0] if self.batch_shared else operand).T

    def from_matrix(self, matrix: np.ndarray, param_shape: tuple[int, ...]) -> np.ndarray:
        """The inverse of :meth:`matrix`: an out×in matrix back in the parameter's layout."""
        if self.kind == "conv2d":
            operand = matrix.reshape(self.weight_shape)
        elif self.batch_shared:
            operand = np.broadcast_to(matrix.T, self.weight_shape)
        else:
            operand = matrix.T
        return unapply_view(np.ascontiguousarray(operand), self.chain, param_shape)


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
    # blocks, which admm then solves for): layer -> a method-defined record.
    structures: dict[str, Any] = field(default_factory=dict)

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
        """Whether some weight is stored narrow and dequantized where it is used."""
        return any(op.name == "linalg.generic" and DEQUANT_TAG in op.attributes for op in self.ops())

    def uses_by_param(self, selected: Callable[[str], bool] = lambda layer: True) -> dict[str, list[WeightedOp]]:
        """The weighted ops of each parameter whose layer is ``selected``, in program order."""
        by_param: dict[str, list[WeightedOp]] = {}
        for w in self.weighted_ops():
            if selected(w.layer):
                by_param.setdefault(w.param, []).append(w)
        return by_param

    def matrix_problem(self, uses: list[WeightedOp]) -> str | None:
        """Why a parameter's uses cannot be rewritten through one out×in matrix
        view (``WeightedOp.matrix``), or None when they can."""
        first = uses[0]
        if self.rewritten(first.param) or self.params[first.param].shape != self.layer_shapes.get(first.layer):
            return "already rewritten by an earlier method"
        for w in uses:
            reason = w.matrix_form()
            if reason:
                return reason
        if len({repr(w.chain) for w in uses}) != 1:
            return "its uses read the weight through different views"
        return None

    def contraction_macs(self) -> int:
        """MACs of every contraction, weighted or not (attention's activation matmuls count too)."""
        return sum(op_macs(op) for op in self.ops() if op.name in CONTRACTIONS)

    def constant_op(self, param: str) -> ir.Operation:
        """The ``arith.constant`` that holds ``param``."""
        for op in self.ops():
            if op.name == "arith.constant" and resource_name(op.attributes["value"]) == param:
                return op
        raise KeyError(f"no constant holds parameter {param!r}")

    def referenced_params(self) -> list[str]:
        names = []
        for op in self.ops():
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
            attr = ir.DenseResourceElementsAttr.get_from_buffer(array, name, ttype)
            real = resource_name(attr) or name  # MLIR renames a clashing blob name
            with ir.InsertionPoint.at_block_begin(self.body):
                value = arith.ConstantOp(ttype, attr).result
        self.params[real] = array
        self.origin[real] = origin if origin is not None else name
        return value

    def at(self, op: ir.Operation) -> "_Builder":
        """A builder inserting before ``op`` (use as a context manager)."""
        return _Builder(self, op)

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
        """An independent copy (a new context), so a method can rewrite without touching this one."""
        module = ir.Module.parse(self.to_bytecode(), context=_torch_mlir_context())
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


def pack_int4(levels: np.ndarray, axis: int) -> np.ndarray:
    """Int4 levels in [-8, 7], two per byte along ``axis`` (even length): element
    2i in the low nibble, 2i+1 in the high one."""
    lv = np.moveaxis(levels.astype(np.int8), axis, -1)
    packed = (lv[..., 0::2] & 0xF) | ((lv[..., 1::2] & 0xF) << 4)
    return np.ascontiguousarray(np.moveaxis(packed.astype(np.uint8), -1, axis))


def unpack_int4(packed: np.ndarray, axis: int) -> np.ndarray:
    """The inverse of :func:`pack_int4`, shaped like the dequantize op's output:
    ``axis`` split into (n/2, 2)."""
    p = np.moveaxis(packed.astype(np.uint8), axis, -1)
    nib = np.stack([p & 0xF, p >> 4], axis=-1).astype(np.int8)
    nib = (nib ^ 8) - 8  # sign-extend 4 bits
    return np.moveaxis(nib, (-2, -1), (axis, axis + 1))


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


class _Builder:
    """Small op builders at one insertion point; values in, values out."""

    def __init__(self, program: Program, before: ir.Operation):
        self.program = program
        self._ip = ir.InsertionPoint(before)
        self._loc = before.location

    def __enter__(self) -> "_Builder":
        self.program.context.__enter__()
        self._loc.__enter__()
        self._ip.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ip.__exit__(*exc)
        self._loc.__exit__(*exc)
        self.program.context.__exit__(*exc)

    def zeros(self, shape: tuple[int, ...], like: ir.Value) -> ir.Value:
        etype = ir.RankedTensorType(like.type).element_type
        empty = tensor.EmptyOp(list(shape), etype).result
        zero = arith.ConstantOp(etype, 0.0).result
        return as_value(linalg.fill(zero, outs=[empty]))

    def collapse(self, value: ir.Value, groups: list[list[int]]) -> ir.Value:
        shape = shape_of(value)
        etype = ir.RankedTensorType(value.type).element_type
        new_shape = [prod(shape[i] for i in g) for g in groups]
        return tensor.CollapseShapeOp(ir.RankedTensorType.get(new_shape, etype), value, _reassoc(groups)).result

    def expand(self, value: ir.Value, groups: list[list[int]], shape: tuple[int, ...]) -> ir.Value:
        etype = ir.RankedTensorType(value.type).element_type
        return tensor.ExpandShapeOp(
            ir.RankedTensorType.get(list(shape), etype), value, _reassoc(groups), [], list(shape)
        ).result

    def transpose(self, value: ir.Value, perm: list[int]) -> ir.Value:
        shape = shape_of(value)
        etype = ir.RankedTensorType(value.type).element_type
        empty = tensor.EmptyOp([shape[p] for p in perm], etype).result
        return as_value(linalg.transpose(value, outs=[empty], permutation=perm))

    def matmul(self, lhs: ir.Value, rhs: ir.Value, init: ir.Value) -> ir.Value:
        return as_value(linalg.matmul(lhs, rhs, outs=[init]))

    def batch_matmul(self, lhs: ir.Value, rhs: ir.Value, init: ir.Value) -> ir.Value:
        return as_value(linalg.batch_matmul(lhs, rhs, outs=[init]))

    def generic(
        self,
        inputs: list[ir.Value],
        init: ir.Value,
        maps: list[str],
        body: Callable[..., ir.Value],
        attrs: dict[str, str] | None = None,
    ) -> ir.Value:
        """An all-parallel ``linalg.generic``: ``maps`` are affine maps written as
        ``"(b, m, c) -> (b, c)"``, one per input and the output; ``body(*args)``
        builds the yielded value from the block arguments (inputs, then output)."""
        n_dims = len(shape_of(init))
        parsed = ir.ArrayAttr.get([ir.Attribute.parse(f"affine_map<{m}>") for m in maps])
        iterators = ir.ArrayAttr.get([ir.Attribute.parse("#linalg.iterator_type<parallel>")] * n_dims)
        op = linalg.GenericOp([init.type], inputs, [init], parsed, iterators)
        for key, value in (attrs or {}).items():
            op.operation.attributes[key] = ir.StringAttr.get(value)
        types = [ir.RankedTensorType(v.type).element_type for v in [*inputs, init]]
        block = op.regions[0].blocks.append(*types)
        with ir.InsertionPoint(block):
            linalg.YieldOp([body(*block.arguments)])
        return op.results[0]

    def index(self, dim: int) -> ir.Value:
        """The iteration index along ``dim`` (inside a generic body)."""
        return linalg.IndexOp(dim).result

    def to_index(self, value: ir.Value) -> ir.Value:
        return arith.IndexCastOp(ir.IndexType.get(), value).result

    def dequantize(self, levels: ir.Value, scale: ir.Value, scale_dims: list[int], bits: int, axis: int | None = None) -> ir.Value:
        """``float(level) · scale`` next to the use of a narrow stored weight.

        ``scale`` is indexed by the output dims ``scale_dims`` (per output channel).
        Int8 levels are stored one per byte; int4 levels are packed two per byte
        along ``axis`` (see :func:`pack_int4`; not a scale dim): the generic
        unpacks into (n/2, 2) along it and a collapse restores the weight's shape."""
        stored = list(shape_of(levels))
        if bits == 4:
            assert axis is not None and axis not in scale_dims
            shape = stored[:axis + 1] + [2] + stored[axis + 1:]
            names = [f"d{i}" for i in range(len(shape))]
            dims = ", ".join(names)
            level_map = ", ".join(n for i, n in enumerate(names) if i != axis + 1)
            scale_names = [names[d if d <= axis else d + 1] for d in scale_dims]
            # a weight dim d >= axis+1 is dim d+1 of the split shape, the pair index is axis+1
        else:
            shape = stored
            names = [f"d{i}" for i in range(len(shape))]
            dims = level_map = ", ".join(names)
            scale_names = [names[d] for d in scale_dims]
        f32 = ir.F32Type.get()
        i8 = ir.IntegerType.get_signless(8)
        init = tensor.EmptyOp(shape, f32).result

        def body(q: ir.Value, s: ir.Value, _out: ir.Value) -> ir.Value:
            if bits == 4:
                pair = arith.IndexCastOp(i8, self.index(axis + 1)).result
                shift = arith.MulIOp(pair, arith.ConstantOp(i8, 4).result).result
                nib = arith.AndIOp(arith.ShRUIOp(q, shift).result, arith.ConstantOp(i8, 15).result).result
                eight = arith.ConstantOp(i8, 8).result
                q = arith.SubIOp(arith.XOrIOp(nib, eight).result, eight).result  # sign-extend
            return arith.MulFOp(arith.SIToFPOp(f32, q).result, s).result

        tag = f"{bits}:{axis}" if bits == 4 else str(bits)
        value = self.generic(
            [levels, scale], init,
            [f"({dims}) -> ({level_map})", f"({dims}) -> ({', '.join(scale_names)})", f"({dims}) -> ({dims})"],
            body, attrs={DEQUANT_TAG: tag},
        )
        if bits == 4:
            groups = [[d] for d in range(axis)] + [[axis, axis + 1]] + [[d] for d in range(axis + 2, len(shape))]
            value = self.collapse(value, groups)
        return value

    def linear(self, x: ir.Value, matrix: ir.Value, init: ir.Value) -> ir.Value:
        """``init + x·matrix`` for x of shape [..., K] and a K×N matrix: leading
        dims are collapsed into the rows of one 2-D matmul (no broadcast weight copy)."""
        xs = shape_of(x)
        if len(xs) == 2:
            return self.matmul(x, matrix, init)
        out_shape = shape_of(init)
        lead = list(range(len(xs) - 1))
        groups = [lead, [len(xs) - 1]]
        y = self.matmul(self.collapse(x, groups), matrix, self.collapse(init, groups))
        return self.expand(y, groups, out_shape)


def as_value(built: Any) -> ir.Value:
    """The single result of what a dialect builder returned (a Value or an op)."""
    if isinstance(built, (ir.OpView, ir.Operation)):
        built = built.results
    if isinstance(built, ir.OpResultList):
        return built[0]
    return built


def _reassoc(groups: list[list[int]]) -> ir.ArrayAttr:
    i64 = ir.IntegerType.get_signless(64)
    return ir.ArrayAttr.get([ir.ArrayAttr.get([ir.IntegerAttr.get(i64, d) for d in g]) for g in groups])
