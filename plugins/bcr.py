"""``--plugins bcr``: block-based column-row pruning (GRIM, Niu et al. 2021).

A weight viewed as an out×in matrix (linear: out×in; LSTM: the 4·hidden×in
gate matrix, so blocks that divide ``hidden`` never straddle gates; conv:
OC×(IC·KH·KW), im2col order) is cut into blocks of ``block`` rows. Each block
keeps the same number of whole columns and whole rows, chosen by importance:
the L2 norm of a column (row) inside the block, weighted by the input's
activation norm when calibration data is given (``score``).

Because every block keeps as many columns and rows as the others, the pruned
layer is one dense batched matmul over compact blocks:

    Xg[b, m, c] = x[m, cols[b, c]]               gather (a linalg.generic)
    Yb = batch_matmul(Xg, Wc)                    Wc: nb × kc × rb
    y[m, n] = init[m, n] + Yb[blk[n], m, pos[n]] scatter; pruned rows add nothing

When every column is kept the gather is dropped and one matmul ``x · Wc``
(Wc: in × nb·rb) computes all blocks; when every row is kept the scatter is a
transpose (blocks are contiguous rows), which IREE folds into the matmul. A
convolution gathers straight from the (padded) image, so im2col and the column
selection are one op. Blocks are of rows only: GRIM's optional column blocks
are not built (METHODS.md); a block's kept columns may lie anywhere.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
from torch_mlir import ir
from torch_mlir.dialects import arith, tensor

from optc.api import LayerChange, Method, MethodContext, MethodResult, layer_selected, option
from optc.errors import OptionError
from optc.hookspecs import hookimpl
from optc.program import Program, WeightedOp, shape_of

_OVERRIDABLE = {"block": int, "col_keep": float, "row_keep": float}


@dataclass
class BcrOptions:
    block: int = option(16, "rows (outputs) per block; must divide the rows of every pruned layer; 0 = one block of all rows")
    col_keep: float = option(0.5, "fraction of columns (inputs) each block keeps, in (0, 1]")
    row_keep: float = option(0.5, "fraction of rows (outputs) each block keeps, in (0, 1]")
    score: Literal["auto", "magnitude", "activation"] = option(
        "auto", "importance: weight L2 norm (magnitude) or weight × input-activation norm (activation, needs --calib); auto = activation when --calib is given"
    )
    override: tuple[str, ...] = option(
        (), "per-layer settings PATTERN:KEY=V[:KEY=V] with KEY in block|col_keep|row_keep, e.g. fc2.weight:block=10:row_keep=1"
    )
    layers: tuple[str, ...] = option((), "only these layers (comma-separated fnmatch patterns on parameter names); empty = all")
    skip: tuple[str, ...] = option((), "never these layers (comma-separated fnmatch patterns)")

    def validate(self) -> None:
        _check_settings("", {"block": self.block, "col_keep": self.col_keep, "row_keep": self.row_keep})
        self.overrides()

    def overrides(self) -> list[tuple[str, dict[str, Any]]]:
        """The parsed ``override`` entries, in order (later entries win)."""
        parsed = []
        for entry in self.override:
            pattern, *pairs = entry.split(":")
            if not pattern or not pairs:
                raise ValueError(f"override={entry!r}: expected PATTERN:KEY=V[:KEY=V], e.g. fc2.weight:block=10")
            values: dict[str, Any] = {}
            for pair in pairs:
                key, _, raw = pair.partition("=")
                if key not in _OVERRIDABLE:
                    raise ValueError(f"override={entry!r}: unknown key {key!r}; allowed: {', '.join(_OVERRIDABLE)}")
                try:
                    values[key] = _OVERRIDABLE[key](raw)
                except ValueError:
                    raise ValueError(f"override={entry!r}: {key}={raw!r} is not a {_OVERRIDABLE[key].__name__}") from None
            _check_settings(f"override {pattern}: ", values)
            parsed.append((pattern, values))
        return parsed

    def for_layer(self, layer: str) -> tuple[int, float, float]:
        """(block, col_keep, row_keep) for ``layer`` after overrides."""
        values = {"block": self.block, "col_keep": self.col_keep, "row_keep": self.row_keep}
        for pattern, override in self.overrides():
            if fnmatch.fnmatchcase(layer, pattern):
                values.update(override)
        return values["block"], values["col_keep"], values["row_keep"]


def _check_settings(where: str, values: dict[str, Any]) -> None:
    for key in ("col_keep", "row_keep"):
        if key in values and not 0.0 < values[key] <= 1.0:
            raise ValueError(f"{where}{key}={values[key]}: keep rates must be in (0, 1]")
    if "block" in values and values["block"] < 0:
        raise ValueError(f"{where}block={values['block']}: must be an integer >= 1 (or 0: one block of all rows)")


@dataclass
class BlockColumnRow:
    """The structure bcr imposed on one layer (a :class:`optc.api.LayerStructure`).

    ``cols[g]`` are the kept input columns of block g (one shared row when every
    column is kept), ``rows[b]`` the kept rows inside block b (0..block-1).
    The compact weight is nb×kc×rb, or in×(nb·rb) when the columns are shared.
    """

    layer: str
    param: str  # the compact weight constant in the program
    block: int
    cols: np.ndarray
    rows: np.ndarray
    matrix: np.ndarray  # the dense out×in weights it was chosen on
    to_param: Callable[[np.ndarray], np.ndarray]  # out×in -> the parameter's layout
    method: str = "bcr"

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    @property
    def scale_dims(self) -> list[int]:
        """The output-channel dims of the compact weight."""
        return [1] if self.shared else [0, 2]

    @property
    def shared(self) -> bool:
        return len(self.cols) == 1 and self.cols.shape[1] == self.shape[1]

    @property
    def keeps_all_rows(self) -> bool:
        return self.rows.shape[1] == self.block

    @property
    def blocks(self) -> int:
        return self.shape[0] // self.block

    def out_rows(self) -> np.ndarray:
        """nb×rb: the matrix row of every compact output channel."""
        return self.rows + self.block * np.arange(self.blocks)[:, None]

    def mask(self) -> np.ndarray:
        m = np.zeros(self.shape, dtype=bool)
        out = self.out_rows()
        for b in range(self.blocks):
            m[np.ix_(out[b], self.cols[0 if self.shared else b])] = True
        return m

    def compact(self, matrix: np.ndarray) -> np.ndarray:
        out = self.out_rows()
        if self.shared:
            return np.ascontiguousarray(matrix[out.reshape(-1)].T)  # in × nb·rb
        return np.stack([matrix[np.ix_(out[b], self.cols[b])].T for b in range(self.blocks)])

    def store(self, program: Program, matrix: np.ndarray, quantized: Any = None) -> str:
        from optc.quant import narrow_weight

        name = f"{self.layer}.bcr"
        if quantized is None:
            value = program.constant(name, self.compact(matrix).astype(np.float32), origin=self.layer)
            program.replace(program.constant_op(self.param), value)
            self.param = program.trace_param(value)[0]
            return "float32"
        scales = quantized.scales[self.out_rows()]  # nb×rb
        self.param, how = narrow_weight(
            program, self.param, name, self.compact(quantized.levels), scales.reshape(-1) if self.shared else scales,
            self.scale_dims, quantized.bits, self.layer,
        )
        return how


def choose_blocks(
    matrix: np.ndarray, block: int, kc: int, rb: int, gram: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(cols nb×kc, rows nb×rb), both sorted: per block the kc columns and then the
    rb rows (within the kept columns) of largest importance. With a Gram matrix
    G = X·Xᵀ of the layer's inputs, importance is the norm of the weights' output
    contribution: column c scores ‖W_b[:, c]‖²·G[c, c], row r scores w·G·wᵀ."""
    n, k = matrix.shape
    nb = n // block
    w = matrix.astype(np.float64).reshape(nb, block, k)
    col_score = (w**2).sum(axis=1) * (np.diag(gram)[None, :] if gram is not None else 1.0)
    cols = np.sort(np.argsort(-col_score, axis=1, kind="stable")[:, :kc], axis=1)
    rows = np.empty((nb, rb), dtype=np.int64)
    for b in range(nb):
        wb = w[b][:, cols[b]]
        if gram is not None:
            g = gram[np.ix_(cols[b], cols[b])]
            row_score = np.einsum("rc,cd,rd->r", wb, g, wb)
        else:
            row_score = (wb**2).sum(axis=1)
        rows[b] = np.sort(np.argsort(-row_score, kind="stable")[:rb])
    return cols, rows


class Bcr(Method):
    name = "bcr"
    summary = "block-based column-row pruning (GRIM): per row block, gather kept inputs and run a compact matmul"
    Options = BcrOptions

    def apply(self, program: Program, options: BcrOptions, ctx: MethodContext) -> MethodResult:
        if options.score == "activation" and ctx.calibration is None:
            raise OptionError("bcr.score=activation needs calibration data: pass --calib data.npz")
        use_gram = ctx.calibration is not None and options.score != "magnitude"
        result = MethodResult(self.name)
        by_param = program.uses_by_param(lambda layer: layer_selected(layer, options.layers, options.skip))
        for param, uses in by_param.items():
            layer, first = uses[0].layer, uses[0]
            reason = program.matrix_problem(uses)
            if reason:
                result.changes.append(LayerChange(layer, f"skipped: {reason}"))
                continue
            weight = program.params[param]
            matrix = first.matrix(weight)
            n, k = matrix.shape
            block, col_keep, row_keep = options.for_layer(layer)
            block = block or n
            if block > n or n % block:
                raise OptionError(
                    f"bcr: block={block} does not fit layer {layer} ({n} output rows): use a block size dividing {n}, "
                    f"bcr.override={layer}:block=N, or bcr.skip={layer}"
                )
            kc = max(1, round(k * col_keep))
            rb = max(1, round(block * row_keep))
            cols, rows = choose_blocks(matrix, block, kc, rb, ctx.calibration.gram(layer) if use_gram else None)
            if kc == k:
                cols = cols[:1]  # every block keeps every column: share them
            structure = BlockColumnRow(
                layer, "", block, cols, rows, matrix, lambda m, first=first, shape=weight.shape: first.from_matrix(m, shape)
            )
            compact = program.constant(f"{layer}.bcr", structure.compact(matrix).astype(np.float32), origin=layer)
            structure.param = program.trace_param(compact)[0]
            tables = _tables(program, structure)
            for w in uses:
                _rewrite(program, w, structure, compact, tables)
            program.structures[layer] = structure
            result.reference_weights[layer] = structure.to_param(np.where(structure.mask(), matrix, 0).astype(matrix.dtype))
            result.changes.append(
                LayerChange(
                    layer,
                    f"pruned to {n // block} blocks × {kc} cols × {rb} rows",
                    {"block": block, "blocks": n // block, "cols_kept": kc, "rows_kept": rb, "in": k, "out": n,
                     "density": kc * rb * (n // block) / (n * k), "score": "activation" if use_gram else "magnitude", "ops": len(uses)},
                )
            )
        return result


@dataclass
class _Tables:
    """Index constants shared by every use of one pruned layer."""

    cols: ir.Value | None  # g×kc input columns (matmul), or None when x is used as is
    conv_cols: tuple[ir.Value, ir.Value, ir.Value] | None  # channel, row, column offsets per kept column
    blk: ir.Value  # per output row: its block (or 0)
    pos: ir.Value  # per output row: its compact channel inside the block (-1: pruned)


def _tables(program: Program, s: BlockColumnRow) -> _Tables:
    n, _ = s.shape
    blk = np.zeros(n, dtype=np.int32)
    pos = np.full(n, -1, dtype=np.int32)
    for b, rows in enumerate(s.out_rows()):
        blk[rows] = 0 if s.shared else b
        pos[rows] = np.arange(len(rows)) + (b * len(rows) if s.shared else 0)
    name = s.layer
    return _Tables(
        cols=None if s.shared else program.constant(f"{name}.bcr_cols", s.cols.astype(np.int32), origin=name),
        conv_cols=None,
        blk=program.constant(f"{name}.bcr_block", blk, origin=name),
        pos=program.constant(f"{name}.bcr_pos", pos, origin=name),
    )


def _conv_tables(program: Program, s: BlockColumnRow, w: WeightedOp) -> tuple[ir.Value, ir.Value, ir.Value]:
    _, c, kh, kw = w.weight_shape
    dil = [int(d) for d in np.array(w.op.attributes["dilations"])]
    ch, rest = np.divmod(s.cols, kh * kw)
    r, q = np.divmod(rest, kw)
    name = s.layer
    return tuple(
        program.constant(f"{name}.bcr_{tag}", a.astype(np.int32), origin=name)
        for tag, a in (("channel", ch), ("row", r * dil[0]), ("col", q * dil[1]))
    )


def _rewrite(program: Program, w: WeightedOp, s: BlockColumnRow, compact: ir.Value, t: _Tables) -> None:
    """Replace one use of the pruned weight by gather → compact (batch) matmul → scatter."""
    op = w.op
    x, init = op.operands[0], op.operands[2]
    conv = w.kind == "conv2d"
    if conv and t.conv_cols is None:
        t.conv_cols = _conv_tables(program, s, w)
    nb, g = s.blocks, len(s.cols)
    kc, rb = s.cols.shape[1], s.rows.shape[1]
    with program.at(op) as build:
        f32 = ir.RankedTensorType(init.type).element_type
        if conv:
            nn, _, oh, ow = shape_of(init)
            stride = [int(d) for d in np.array(op.attributes["strides"])]
            lead = (nn, oh, ow)
            gathered = _gather_patches(build, x, t.conv_cols, g, kc, lead, stride, f32)
            rows_x = build.collapse(gathered, [[0], [1, 2, 3], [4]])
        else:
            xs = shape_of(x)
            lead = xs[:-1]
            x2 = build.collapse(x, [list(range(len(xs) - 1)), [len(xs) - 1]]) if len(xs) > 2 else x
            rows_x = x2 if s.shared else _gather_columns(build, x2, t.cols, nb, kc, f32)
        m = int(np.prod(lead))
        if s.shared or nb == 1:
            # One matmul: shared columns put every block's channels side by side
            # in "block" 0, and one block needs no batch dim (IREE's
            # batch_matmul is slower than a matmul of the same FLOPs).
            lhs, rhs = (build.collapse(v, [[0, 1], [2]]) if len(shape_of(v)) == 3 else v for v in (rows_x, compact))
            y = build.matmul(lhs, rhs, build.zeros((m, nb * rb), like=init))
            y = build.expand(y, [list(range(len(lead) + 1)), [len(lead) + 1]], (1, *lead, nb * rb))
        else:
            y = build.batch_matmul(rows_x, compact, build.zeros((nb, m, rb), like=init))
            if len(lead) > 1:
                y = build.expand(y, [[0], list(range(1, len(lead) + 1)), [len(lead) + 1]], (nb, *lead, rb))
        if s.keeps_all_rows and not conv:
            out = _interleave(build, y, init)
        else:
            out = _scatter(build, y, init, t.blk, t.pos, channel_dim=1 if conv else len(lead))
    program.replace(op, out)


def _gather_columns(build: Any, x2: ir.Value, cols: ir.Value, nb: int, kc: int, f32: ir.Type) -> ir.Value:
    """Xg[b, m, c] = x[m, cols[b, c]]."""
    m = shape_of(x2)[0]

    def body(col: ir.Value, _out: ir.Value) -> ir.Value:
        return tensor.ExtractOp(x2, [build.index(1), build.to_index(col)]).result

    return build.generic([cols], tensor.EmptyOp([nb, m, kc], f32).result, ["(b, m, c) -> (b, c)", "(b, m, c) -> (b, m, c)"], body)


def _gather_patches(build: Any, x: ir.Value, tables: tuple, g: int, kc: int, lead: tuple, stride: list[int], f32: ir.Type) -> ir.Value:
    """Xg[b, n, i, j, c] = x[n, ch[b, c], i·sh + dh[b, c], j·sw + dw[b, c]] (im2col of the kept columns)."""
    nn, oh, ow = lead
    idx = ir.IndexType.get()

    def body(ch: ir.Value, dh: ir.Value, dw: ir.Value, _out: ir.Value) -> ir.Value:
        def pos(dim: int, step: int, off: ir.Value) -> ir.Value:
            scaled = arith.MulIOp(build.index(dim), arith.ConstantOp(idx, step).result).result
            return arith.AddIOp(scaled, build.to_index(off)).result

        return tensor.ExtractOp(x, [build.index(1), build.to_index(ch), pos(2, stride[0], dh), pos(3, stride[1], dw)]).result

    table_map = "(b, n, i, j, c) -> (b, c)"
    return build.generic(
        list(tables), tensor.EmptyOp([g, nn, oh, ow, kc], f32).result,
        [table_map] * 3 + ["(b, n, i, j, c) -> (b, n, i, j, c)"], body,
    )


def _interleave(build: Any, y: ir.Value, init: ir.Value) -> ir.Value:
    """With every row kept, block b's outputs are channels b·B … b·B+B-1 in order:
    out = init + transpose(Y) — a plain permutation, which vectorizes, where the
    general scatter is an indexed load per element."""
    shape = shape_of(y)  # (nb, *lead, B)
    rank = len(shape)
    perm = list(range(1, rank - 1)) + [0, rank - 1]  # (*lead, nb, B)
    moved = build.transpose(y, perm)
    lead = len(shape) - 2
    flat = build.collapse(moved, [[d] for d in range(lead)] + [[lead, lead + 1]])
    dims = ", ".join(f"d{i}" for i in range(lead + 1))
    return build.generic(
        [flat], init, [f"({dims}) -> ({dims})", f"({dims}) -> ({dims})"],
        lambda v, acc: arith.AddFOp(acc, v).result,
    )


def _scatter(build: Any, y: ir.Value, init: ir.Value, blk: ir.Value, pos: ir.Value, channel_dim: int) -> ir.Value:
    """out[…, o, …] = init + Y[blk[o], …, pos[o]] for kept output channels o, init
    for pruned ones. ``y`` is (blocks, *rest, channels) where rest are the
    output's dims other than the channel dim (last for a matmul, 1 for NCHW)."""
    rank = len(shape_of(init))
    dims = ", ".join(f"d{i}" for i in range(rank))
    i32 = ir.IntegerType.get_signless(32)
    f32 = ir.RankedTensorType(init.type).element_type

    def body(b: ir.Value, p: ir.Value, acc: ir.Value) -> ir.Value:
        zero_i = arith.ConstantOp(i32, 0).result
        kept = arith.CmpIOp(arith.CmpIPredicate.sge, p, zero_i).result
        safe = arith.SelectOp(kept, p, zero_i).result
        rest = [build.index(i) for i in range(rank) if i != channel_dim]
        v = tensor.ExtractOp(y, [build.to_index(b), *rest, build.to_index(safe)]).result
        return arith.AddFOp(acc, arith.SelectOp(kept, v, arith.ConstantOp(f32, 0.0).result).result).result

    channel = f"({dims}) -> (d{channel_dim})"
    return build.generic([blk, pos], init, [channel, channel, f"({dims}) -> ({dims})"], body)


@hookimpl
def optc_register_methods(register):
    register(Bcr())
