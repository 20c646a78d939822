"""How a weight is stored in the program: float32, float16, or int8/int4 levels
with a float32 scale per output channel — and the op that widens it where it is used.

One entry, :func:`store`, replaces a weight's constant by its stored form:

    float32   the array as is
    float16   half the bytes; an ``arith.extf`` widens it before its use
    int8/int4 a :class:`Quantized` matrix: levels (int4: two per byte) and per-row
              scales; a dequantizing ``linalg.generic`` computes ``float(level)·scale``

The dequantize generic carries its meaning as a typed attribute
(``optc.dequantize = {bits = 4 : i64, pack_axis = 1 : i64}``), which
``Program.trace_param`` reads to follow a weight through it. Programs with
narrow weights are compiled without IREE's const-eval (``narrow_weights``),
so the artifact keeps the narrow bytes and widens them at load time.

Quantization: row r of an out×in matrix becomes ``levels[r] · scales[r]`` with
integer levels in [-qmax, qmax] (int8: 127, int4: 7), on the row's max-abs scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from torch_mlir import ir
from torch_mlir.dialects import arith, tensor

from optc.builder import Builder, shape_of

if TYPE_CHECKING:
    from optc.program import Program

QMAX = {8: 127, 4: 7}
DEQUANT_ATTR = "optc.dequantize"  # marks the generic that widens narrow stored levels


@dataclass
class Quantized:
    """``levels · scales[:, None]`` is the quantized out×in matrix."""

    levels: np.ndarray  # int8, out×in
    scales: np.ndarray  # float32, (out,)
    bits: int

    def dequantized(self) -> np.ndarray:
        return (self.levels.astype(np.float32) * self.scales[:, None]).astype(np.float32)


def row_scales(matrix: np.ndarray, bits: int) -> np.ndarray:
    """The max-abs scale of each row (1 for an all-zero row)."""
    peak = np.abs(matrix).max(axis=1)
    return np.where(peak > 0, peak / QMAX[bits], 1.0).astype(np.float32)


def quantize(matrix: np.ndarray, bits: int) -> Quantized:
    """Round each row to its nearest level on its max-abs scale (the Euclidean
    projection onto those levels)."""
    scales = row_scales(matrix, bits)
    q = QMAX[bits]
    levels = np.clip(np.rint(matrix / scales[:, None]), -q, q).astype(np.int8)
    return Quantized(levels, scales, bits)


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


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    """How an out×in matrix is laid out in the array a program stores (the
    parameter's own layout, bcr's compact blocks, …)."""

    to_stored: Callable[[np.ndarray], np.ndarray]

    def channels(self, out: int, inputs: int) -> tuple[list[int], np.ndarray]:
        """(dims of the stored array that index output channels, the matrix row of
        each stored channel over those dims) — where per-row scales go."""
        rows = self.to_stored(np.broadcast_to(np.arange(out, dtype=np.float32)[:, None], (out, inputs)))
        dims = [d for d in range(rows.ndim) if rows.shape[d] > 1 and not np.all(rows == rows.take([0], axis=d))]
        picked = rows[tuple(slice(None) if d in dims else 0 for d in range(rows.ndim))]
        return dims, picked.astype(np.int64)


IDENTITY = Layout(lambda m: m)


@dataclass
class Stored:
    """Where and how a weight is stored after :func:`store`."""

    param: str  # the constant now holding it (levels for int8/int4)
    storage: str  # "float32", "float16", "int8", "int4 (two per byte)", …


def store(
    program: "Program",
    param: str,
    weights: np.ndarray | Quantized,
    *,
    name: str,
    origin: str,
    layout: Layout = IDENTITY,
    dtype: Any = np.float32,
) -> Stored:
    """Replace parameter ``param``'s constant by ``weights`` laid out by ``layout``.

    ``weights`` is a float array (an out×in matrix when ``layout`` maps one;
    stored as ``dtype``, float32 or float16) or a :class:`Quantized` matrix
    (int8, or int4 packed two per byte along a non-channel dim of even length,
    else one level per byte). The new constants are named ``name`` (int:
    ``name.levels``/``name.scales``) and belong to layer ``origin``."""
    old = program.constant_op(param)
    if not isinstance(weights, Quantized):
        array = np.asarray(layout.to_stored(weights)).astype(dtype)
        value = program.constant(name, array, origin=origin)
        how = "float32"
        if array.dtype == np.float16:
            with program.at(old) as build:
                value = build_widen(build, value, old.results[0].type)
            how = "float16"
        program.replace(old, value)
        return Stored(program.trace_param(value)[0], how)
    levels = layout.to_stored(weights.levels.astype(np.float32)).astype(np.int8)
    dims, rows = layout.channels(*weights.levels.shape)
    scales = weights.scales[rows].astype(np.float32)
    axis = None
    if weights.bits == 4:
        axis = next((d for d in reversed(range(levels.ndim)) if d not in dims and levels.shape[d] % 2 == 0), None)
    if axis is not None:
        stored, how = pack_int4(levels, axis), "int4 (two per byte)"
    else:
        stored, how = levels, "int8" if weights.bits == 8 else "int4 levels one per byte (no even dim to pack along)"
    q_val = program.constant(f"{name}.levels", stored, origin=origin)
    s_val = program.constant(f"{name}.scales", scales, origin=origin)
    with program.at(program.first_user(old.results[0])) as build:
        value = dequantize(build, q_val, s_val, dims, 4 if axis is not None else 8, axis)
    program.replace(old, value)
    return Stored(program.trace_param(value)[0], how)


# --------------------------------------------------------------------------- the widening ops


def build_widen(build: Builder, half: ir.Value, wide_type: ir.Type) -> ir.Value:
    """A float16 stored weight widened to ``wide_type`` (``arith.extf``)."""
    return arith.ExtFOp(wide_type, half).result


def dequantize(build: Builder, levels: ir.Value, scale: ir.Value, scale_dims: list[int], bits: int, axis: int | None = None) -> ir.Value:
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
        level_map = ", ".join(n for i, n in enumerate(names) if i != axis + 1)
        # a weight dim d > axis is dim d+1 of the split shape; the pair index is axis+1
        scale_names = [names[d if d <= axis else d + 1] for d in scale_dims]
    else:
        shape = stored
        names = [f"d{i}" for i in range(len(shape))]
        level_map = ", ".join(names)
        scale_names = [names[d] for d in scale_dims]
    dims = ", ".join(names)
    f32 = ir.F32Type.get()
    i8 = ir.IntegerType.get_signless(8)
    i64 = ir.IntegerType.get_signless(64)

    def body(q: ir.Value, s: ir.Value, _out: ir.Value) -> ir.Value:
        if bits == 4:
            pair = arith.IndexCastOp(i8, build.index(axis + 1)).result
            shift = arith.MulIOp(pair, arith.ConstantOp(i8, 4).result).result
            nib = arith.AndIOp(arith.ShRUIOp(q, shift).result, arith.ConstantOp(i8, 15).result).result
            eight = arith.ConstantOp(i8, 8).result
            q = arith.SubIOp(arith.XOrIOp(nib, eight).result, eight).result  # sign-extend
        return arith.MulFOp(arith.SIToFPOp(f32, q).result, s).result

    meaning = ir.DictAttr.get({"bits": ir.IntegerAttr.get(i64, bits), "pack_axis": ir.IntegerAttr.get(i64, -1 if axis is None else axis)})
    value = build.generic(
        [levels, scale], tensor.EmptyOp(shape, f32).result,
        [f"({dims}) -> ({level_map})", f"({dims}) -> ({', '.join(scale_names)})", f"({dims}) -> ({dims})"],
        body, attrs={DEQUANT_ATTR: meaning},
    )
    if bits == 4:
        groups = [[d] for d in range(axis)] + [[axis, axis + 1]] + [[d] for d in range(axis + 2, len(shape))]
        value = build.collapse(value, groups)
    return value


def dequantize_step(op: ir.Operation) -> tuple[str, Any] | None:
    """The view step of a dequantize generic: ("dequant", (bits, pack axis or None, shape))."""
    if DEQUANT_ATTR not in op.attributes:
        return None
    meaning = ir.DictAttr(op.attributes[DEQUANT_ATTR])
    bits = ir.IntegerAttr(meaning["bits"]).value
    axis = ir.IntegerAttr(meaning["pack_axis"]).value
    return "dequant", (bits, None if axis < 0 else axis, shape_of(op.results[0]))


def stored_levels(array: np.ndarray, bits: int, axis: int | None, shape: tuple[int, ...]) -> np.ndarray:
    """The float levels a dequantize op reads from its stored array (its scales live apart)."""
    return (unpack_int4(array, axis) if bits == 4 else array).astype(np.float32).reshape(shape)


def narrow_weights(program: "Program") -> bool:
    """Whether some weight is stored narrow and widened where it is used."""
    for op in program.ops():
        if op.name == "linalg.generic" and DEQUANT_ATTR in op.attributes:
            return True
        if op.name == "arith.extf" and program.trace_param(op.results[0]) is not None:
            return True
    return False


def narrow_kinds(program: "Program") -> set[str]:
    """The narrow element types the program stores weights in ("f16", "i8")."""
    kinds = set()
    for op in program.ops():
        if op.name == "linalg.generic" and DEQUANT_ATTR in op.attributes:
            kinds.add("i8")
        elif op.name == "arith.extf" and program.trace_param(op.results[0]) is not None:
            kinds.add(str(ir.RankedTensorType(op.operands[0].type).element_type))
    return kinds
