"""The op builders that rewrites use: values in, values out, at one insertion point.

    with program.at(op) as b:          # insert before ``op``
        t = b.linear(x, a, b.zeros(rows + (r,), like=x))
        y = b.linear(t, b_factor, init)
    program.replace(op, y)

Every builder takes and returns ``ir.Value``s of ranked tensors; shapes are
static. Element types follow the inputs (``like=`` where a new tensor is made).
Conv builders read NCHW images; weights are in PyTorch's layout (O×C×KH×KW,
depthwise C×KH×KW, grouped O×(C/G)×KH×KW). ``generic`` builds parallel and
reduction ``linalg.generic``s from affine maps written as text.
"""

from __future__ import annotations

from math import prod
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np
from torch_mlir import ir
from torch_mlir.dialects import arith, linalg, tensor

if TYPE_CHECKING:
    from optc.program import Program

Iterator = Literal["parallel", "reduction"]


def tensor_type_text(shape: Sequence[int | None], elem: str = "f32") -> str:
    """MLIR text of a ranked tensor type, ``None`` for a dynamic dimension: (None, 3) -> ``tensor<?x3xf32>``
    (for modules written as MLIR text: drnet's and --dynamic-batch's dispatchers)."""
    return "tensor<" + "".join(f"{'?' if d is None else d}x" for d in shape) + elem + ">"


def shape_of(value: ir.Value) -> tuple[int, ...]:
    return tuple(ir.RankedTensorType(value.type).shape)


def element_type(value: ir.Value) -> ir.Type:
    return ir.RankedTensorType(value.type).element_type


def is_float(t: ir.Type) -> bool:
    try:
        ir.FloatType(t)
        return True
    except ValueError:
        return False


def indexing_maps(op: ir.Operation) -> list[ir.AffineMap]:
    """A linalg op's indexing maps, one per operand (named ops too)."""
    return [ir.AffineMapAttr(m).value if isinstance(m, ir.Attribute) else m for m in linalg.get_indexing_maps(op.opview)]


def defining_op(value: ir.Value) -> ir.Operation | None:
    """The op whose result ``value`` is; None for a block argument."""
    owner = value.owner
    if isinstance(owner, (ir.OpView, ir.Operation)):
        return owner.operation
    return None


def fill_value(value: ir.Value) -> float | int | None:
    """The constant a ``linalg.fill`` result is filled with (true is 1); None for any other value."""
    fill = defining_op(value)
    scalar = defining_op(fill.operands[0]) if fill is not None and fill.name == "linalg.fill" else None
    if scalar is None or scalar.name != "arith.constant":
        return None
    attr = scalar.attributes["value"]
    if isinstance(attr, ir.BoolAttr):
        return int(attr.value)
    return attr.value if isinstance(attr, (ir.FloatAttr, ir.IntegerAttr)) else None


def is_zero_fill(value: ir.Value) -> bool:
    return fill_value(value) == 0


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


def _pair(v: int | Sequence[int]) -> list[int]:
    return [int(v), int(v)] if isinstance(v, (int, np.integer)) else [int(x) for x in v]


def _conv_out(size: int, k: int, stride: int, dilation: int) -> int:
    return (size - (k - 1) * dilation - 1) // stride + 1


class Builder:
    """Op builders inserting before one op (use as a context manager)."""

    def __init__(self, program: "Program", before: ir.Operation):
        self.program = program
        self._ip = ir.InsertionPoint(before)
        self._loc = before.location

    def __enter__(self) -> "Builder":
        self.program.context.__enter__()
        self._loc.__enter__()
        self._ip.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ip.__exit__(*exc)
        self._loc.__exit__(*exc)
        self.program.context.__exit__(*exc)

    # ------------------------------------------------------------- tensors
    def empty(self, shape: Sequence[int], like: ir.Value | ir.Type) -> ir.Value:
        """An uninitialised tensor of ``shape`` with ``like``'s element type (or that type)."""
        etype = like if isinstance(like, ir.Type) else element_type(like)
        return tensor.EmptyOp(list(shape), etype).result

    def zeros(self, shape: Sequence[int], like: ir.Value | ir.Type) -> ir.Value:
        empty = self.empty(shape, like)
        etype = element_type(empty)
        zero = arith.ConstantOp(etype, 0.0 if is_float(etype) else 0).result
        return as_value(linalg.fill(zero, outs=[empty]))

    def constant(self, name: str, array: np.ndarray, origin: str | None = None) -> ir.Value:
        """A named parameter (``Program.constant``), usable from the builder."""
        return self.program.constant(name, array, origin=origin)

    def collapse(self, value: ir.Value, groups: list[list[int]]) -> ir.Value:
        """Merge each group of consecutive dims into one (``tensor.collapse_shape``)."""
        shape = shape_of(value)
        new_shape = [prod(shape[i] for i in g) for g in groups]
        return tensor.CollapseShapeOp(ir.RankedTensorType.get(new_shape, element_type(value)), value, _reassoc(groups)).result

    def expand(self, value: ir.Value, groups: list[list[int]], shape: Sequence[int]) -> ir.Value:
        """Split each dim of ``value`` into its group of dims of ``shape`` (``tensor.expand_shape``)."""
        return tensor.ExpandShapeOp(
            ir.RankedTensorType.get(list(shape), element_type(value)), value, _reassoc(groups), [], list(shape)
        ).result

    def transpose(self, value: ir.Value, perm: list[int]) -> ir.Value:
        shape = shape_of(value)
        empty = self.empty([shape[p] for p in perm], value)
        return as_value(linalg.transpose(value, outs=[empty], permutation=perm))

    def slice(self, value: ir.Value, offsets: Sequence[int], sizes: Sequence[int], strides: Sequence[int] | None = None) -> ir.Value:
        """``value[offsets : offsets + sizes·strides : strides]`` per dim (``tensor.extract_slice``)."""
        strides = list(strides) if strides is not None else [1] * len(sizes)
        rtype = ir.RankedTensorType.get(list(sizes), element_type(value))
        return tensor.ExtractSliceOp(rtype, value, [], [], [], list(offsets), list(sizes), strides).result

    def concat(self, values: Sequence[ir.Value], dim: int) -> ir.Value:
        """The values joined along ``dim`` (each slice inserted into one new tensor)."""
        shapes = [shape_of(v) for v in values]
        total = list(shapes[0])
        total[dim] = sum(s[dim] for s in shapes)
        out = self.empty(total, values[0])
        offset = 0
        for v, s in zip(values, shapes):
            offsets = [0] * len(s)
            offsets[dim] = offset
            out = tensor.InsertSliceOp(v, out, [], [], [], offsets, list(s), [1] * len(s)).result
            offset += s[dim]
        return out

    # ------------------------------------------------------------- generics
    def generic(
        self,
        inputs: list[ir.Value],
        init: ir.Value,
        maps: list[str],
        body: Callable[..., ir.Value],
        attrs: dict[str, ir.Attribute | str] | None = None,
        iterators: Sequence[Iterator] | None = None,
    ) -> ir.Value:
        """A ``linalg.generic`` with one output. ``maps`` are affine maps written as
        ``"(b, m, c) -> (b, c)"``, one per input and the output; ``iterators``
        name each loop dim parallel or reduction (all parallel by default; a
        reduction dim is absent from the output map and ``init`` is the
        accumulator); ``body(*args)`` builds the yielded value from the block
        arguments (inputs, then the output's current value)."""
        n_dims = ir.AffineMapAttr(ir.Attribute.parse(f"affine_map<{maps[-1]}>")).value.n_dims
        iterators = list(iterators) if iterators is not None else ["parallel"] * n_dims
        if len(iterators) != n_dims:
            raise ValueError(f"{len(iterators)} iterator types for {n_dims} loop dims")
        parsed = ir.ArrayAttr.get([ir.Attribute.parse(f"affine_map<{m}>") for m in maps])
        kinds = ir.ArrayAttr.get([ir.Attribute.parse(f"#linalg.iterator_type<{it}>") for it in iterators])
        op = linalg.GenericOp([init.type], inputs, [init], parsed, kinds)
        for key, value in (attrs or {}).items():
            op.operation.attributes[key] = ir.StringAttr.get(value) if isinstance(value, str) else value
        types = [element_type(v) for v in [*inputs, init]]
        block = op.regions[0].blocks.append(*types)
        with ir.InsertionPoint(block):
            linalg.YieldOp([body(*block.arguments)])
        return op.results[0]

    def sum(self, value: ir.Value, dims: Sequence[int], init: ir.Value | None = None) -> ir.Value:
        """``init + value`` summed over ``dims`` (a reduction generic; init defaults to zeros)."""
        shape = shape_of(value)
        kept = [d for d in range(len(shape)) if d not in dims]
        if init is None:
            init = self.zeros([shape[d] for d in kept], value)
        names = [f"d{i}" for i in range(len(shape))]
        full = ", ".join(names)
        out = ", ".join(names[d] for d in kept)
        iterators = ["reduction" if d in dims else "parallel" for d in range(len(shape))]
        return self.generic([value], init, [f"({full}) -> ({full})", f"({full}) -> ({out})"], lambda v, acc: self.add(acc, v), iterators=iterators)

    def add(self, a: ir.Value, b: ir.Value) -> ir.Value:
        """Scalar ``a + b`` (inside a generic body), float or integer."""
        return (arith.AddFOp if is_float(a.type) else arith.AddIOp)(a, b).result

    def mul(self, a: ir.Value, b: ir.Value) -> ir.Value:
        return (arith.MulFOp if is_float(a.type) else arith.MulIOp)(a, b).result

    def index(self, dim: int) -> ir.Value:
        """The iteration index along ``dim`` (inside a generic body)."""
        return linalg.IndexOp(dim).result

    def to_index(self, value: ir.Value) -> ir.Value:
        return arith.IndexCastOp(ir.IndexType.get(), value).result

    def gather(self, value: ir.Value, indices: ir.Value | np.ndarray, dim: int) -> ir.Value:
        """``value.take(indices, axis=dim)`` for 1-D integer ``indices`` (a constant
        is made from a numpy array): one generic reading ``value`` by ``tensor.extract``."""
        if isinstance(indices, np.ndarray):
            indices = self.program.constant("gather_indices", indices.astype(np.int32))
        shape = list(shape_of(value))
        shape[dim] = shape_of(indices)[0]
        names = [f"d{i}" for i in range(len(shape))]

        def body(i: ir.Value, _out: ir.Value) -> ir.Value:
            at = [self.to_index(i) if d == dim else self.index(d) for d in range(len(shape))]
            return tensor.ExtractOp(value, at).result

        full = ", ".join(names)
        return self.generic([indices], self.empty(shape, value), [f"({full}) -> ({names[dim]})", f"({full}) -> ({full})"], body)

    def scatter_add(self, value: ir.Value, positions: ir.Value | np.ndarray, dim: int, init: ir.Value) -> ir.Value:
        """``out = init`` plus, along ``dim``, ``value[..., positions[o], ...]`` at every
        output index o with ``positions[o] >= 0`` (-1: nothing added) — the
        inverse of :meth:`gather` written as a gather over the output, so every
        output element is computed once."""
        if isinstance(positions, np.ndarray):
            positions = self.program.constant("scatter_positions", positions.astype(np.int32))
        rank = len(shape_of(init))
        names = [f"d{i}" for i in range(rank)]
        ptype = element_type(positions)
        etype = element_type(init)

        def body(p: ir.Value, acc: ir.Value) -> ir.Value:
            zero_i = arith.ConstantOp(ptype, 0).result
            kept = arith.CmpIOp(arith.CmpIPredicate.sge, p, zero_i).result
            safe = arith.SelectOp(kept, p, zero_i).result
            at = [self.to_index(safe) if d == dim else self.index(d) for d in range(rank)]
            v = tensor.ExtractOp(value, at).result
            zero = arith.ConstantOp(etype, 0.0).result
            return self.add(acc, arith.SelectOp(kept, v, zero).result)

        full = ", ".join(names)
        return self.generic([positions], init, [f"({full}) -> ({names[dim]})", f"({full}) -> ({full})"], body)

    # ------------------------------------------------------------- contractions
    def matmul(self, lhs: ir.Value, rhs: ir.Value, init: ir.Value) -> ir.Value:
        return as_value(linalg.matmul(lhs, rhs, outs=[init]))

    def batch_matmul(self, lhs: ir.Value, rhs: ir.Value, init: ir.Value) -> ir.Value:
        return as_value(linalg.batch_matmul(lhs, rhs, outs=[init]))

    def linear(self, x: ir.Value, matrix: ir.Value, init: ir.Value) -> ir.Value:
        """``init + x·matrix`` for x of shape [..., K] and a K×N matrix: leading
        dims are collapsed into the rows of one 2-D matmul (no broadcast weight copy)."""
        xs = shape_of(x)
        if len(xs) == 2:
            return self.matmul(x, matrix, init)
        out_shape = shape_of(init)
        groups = [list(range(len(xs) - 1)), [len(xs) - 1]]
        y = self.matmul(self.collapse(x, groups), matrix, self.collapse(init, groups))
        return self.expand(y, groups, out_shape)

    def conv_init(self, x: ir.Value, out_channels: int, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> ir.Value:
        """Zeros shaped like the NCHW output of a convolution of ``x`` (no padding: pad ``x`` first)."""
        n, _, h, w = shape_of(x)
        oh = _conv_out(h, kernel[0], strides[0], dilations[0])
        ow = _conv_out(w, kernel[1], strides[1], dilations[1])
        return self.zeros((n, out_channels, oh, ow), x)

    def conv2d(self, x: ir.Value, weight: ir.Value, init: ir.Value | None = None, strides: int | Sequence[int] = 1, dilations: int | Sequence[int] = 1) -> ir.Value:
        """``init +`` an NCHW convolution with an O×C×KH×KW weight (``linalg.conv_2d_nchw_fchw``)."""
        strides, dilations = _pair(strides), _pair(dilations)
        o, _, kh, kw = shape_of(weight)
        init = init if init is not None else self.conv_init(x, o, (kh, kw), strides, dilations)
        return as_value(linalg.conv_2d_nchw_fchw(x, weight, outs=[init], strides=strides, dilations=dilations))

    def conv1x1(self, x: ir.Value, matrix: ir.Value, init: ir.Value | None = None, strides: int | Sequence[int] = 1) -> ir.Value:
        """A 1×1 convolution with an O×C matrix: the matrix is viewed as O×C×1×1."""
        o, c = shape_of(matrix)
        return self.conv2d(x, self.expand(matrix, [[0], [1, 2, 3]], (o, c, 1, 1)), init, strides)

    def depthwise_conv2d(self, x: ir.Value, weight: ir.Value, init: ir.Value | None = None, strides: int | Sequence[int] = 1, dilations: int | Sequence[int] = 1) -> ir.Value:
        """``init +`` a depthwise NCHW convolution with a C×KH×KW weight (one filter per channel)."""
        strides, dilations = _pair(strides), _pair(dilations)
        c, kh, kw = shape_of(weight)
        init = init if init is not None else self.conv_init(x, c, (kh, kw), strides, dilations)
        return as_value(linalg.depthwise_conv_2d_nchw_chw(x, weight, outs=[init], strides=strides, dilations=dilations))

    def grouped_conv2d(self, x: ir.Value, weight: ir.Value, groups: int, init: ir.Value | None = None, strides: int | Sequence[int] = 1, dilations: int | Sequence[int] = 1) -> ir.Value:
        """``init +`` a grouped NCHW convolution with an O×(C/G)×KH×KW weight: the
        image, weight and output are split into G groups (``linalg.conv_2d_ngchw_gfchw``)."""
        strides, dilations = _pair(strides), _pair(dilations)
        n, c, h, w = shape_of(x)
        o, cg, kh, kw = shape_of(weight)
        if c != cg * groups or o % groups:
            raise ValueError(f"grouped conv: {c} input and {o} output channels do not split into {groups} groups of {cg} inputs")
        init = init if init is not None else self.conv_init(x, o, (kh, kw), strides, dilations)
        _, _, oh, ow = shape_of(init)
        xg = self.expand(x, [[0], [1, 2], [3], [4]], (n, groups, cg, h, w))
        wg = self.expand(weight, [[0, 1], [2], [3], [4]], (groups, o // groups, cg, kh, kw))
        ig = self.expand(init, [[0], [1, 2], [3], [4]], (n, groups, o // groups, oh, ow))
        y = as_value(linalg.conv_2d_ngchw_gfchw(xg, wg, outs=[ig], strides=strides, dilations=dilations))
        return self.collapse(y, [[0], [1, 2], [3], [4]])

    def depthwise_conv2d_multiplier(self, x: ir.Value, weight: ir.Value, init: ir.Value | None = None, strides: int | Sequence[int] = 1, dilations: int | Sequence[int] = 1) -> ir.Value:
        """``init +`` a depthwise NCHW convolution with channel multiplier M: a
        C×M×KH×KW weight convolves input channel c with M filters, giving output
        channels c·M … c·M+M-1. Built as a broadcast of the image to C·M channels
        (a parallel generic, fused into the conv by IREE) and a
        ``linalg.depthwise_conv_2d_nchw_chw`` (which has no multiplier)."""
        n, c, h, w = shape_of(x)
        wc, m, kh, kw = shape_of(weight)
        if wc != c:
            raise ValueError(f"depthwise conv with multiplier: weight has {wc} channels, image {c}")
        repeated = self.generic([x], self.empty((n, c, m, h, w), x), ["(n, c, m, h, w) -> (n, c, h, w)", "(n, c, m, h, w) -> (n, c, m, h, w)"], lambda v, _out: v)
        flat = self.collapse(repeated, [[0], [1, 2], [3], [4]])
        return self.depthwise_conv2d(flat, self.collapse(weight, [[0, 1], [2], [3]]), init, strides, dilations)
