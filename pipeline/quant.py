"""Per-output-channel symmetric integer quantization, and storing a weight narrow.

A row (output channel) r of an out×in matrix becomes ``levels[r] · scales[r]``
with integer levels in [-qmax, qmax] (int8: 127, int4: 7). The program stores
the levels as i8 (int4: two per byte) plus an f32 scale per row, and a
``linalg.generic`` next to the use widens them (``_Builder.dequantize``), so the
artifact carries the narrow bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from optc.program import Program, pack_int4

QMAX = {8: 127, 4: 7}


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


def narrow_weight(
    program: Program,
    param: str,
    name: str,
    levels: np.ndarray,
    scales: np.ndarray,
    scale_dims: list[int],
    bits: int,
    origin: str,
) -> tuple[str, str]:
    """Replace parameter ``param``'s constant by ``levels`` (int8, the weight's
    shape) and ``scales`` (shaped like the weight's ``scale_dims``) widened by a
    dequantize op before its first use. Returns the new levels parameter and how
    it is stored. Int4 packs along a dim that is not a scale dim and has even
    length; without one it is stored one level per byte."""
    axis = None
    if bits == 4:
        axis = next((d for d in reversed(range(levels.ndim)) if d not in scale_dims and levels.shape[d] % 2 == 0), None)
    if bits == 4 and axis is not None:
        stored, how = pack_int4(levels, axis), "int4 (two per byte)"
    else:
        stored, how = levels.astype(np.int8), "int8" if bits == 8 else "int4 levels one per byte (no even dim to pack along)"
    old = program.constant_op(param)
    q_val = program.constant(f"{name}.levels", stored, origin=origin)
    s_val = program.constant(f"{name}.scales", scales.astype(np.float32), origin=origin)
    with program.at(program.first_user(old.results[0])) as build:
        value = build.dequantize(q_val, s_val, scale_dims, 4 if axis is not None else 8, axis)
    program.replace(old, value)
    return program.trace_param(value)[0], how
