"""``--plugins bcr``: block-based column-row pruning (GRIM, Niu et al. 2021).

A weight viewed as an out×in matrix (linear: out×in; LSTM: the 4·hidden×in
gate matrix, so blocks that divide ``hidden`` never straddle gates; conv:
OC×(IC·KH·KW), im2col order) is cut into blocks of ``block`` rows. Each block
keeps the same number of whole columns and whole rows, chosen by importance:
the L2 norm of a column (row) inside the block, weighted by the input's
activation norm when calibration data is given (``score``).

Blocks are grouped by ``col_group`` rows: the blocks of a group keep the same
columns (each block still keeps its own rows), so the pruned layer is one dense
batched matmul over compact groups:

    Xg[g, m, c] = x[m, cols[g, c]]               gather (a linalg.generic)
    Yg = batch_matmul(Xg, Wc)                    Wc: ng × kc × (blocks per group · rb)
    y[m, n] = init[m, n] + Yg[grp[n], m, pos[n]] scatter; pruned rows add nothing,
                                                 by windows of 16 rows n (_expand_rows)

By default (``col_group=0``) the whole layer is one group: gather, one
``matmul``, scatter. ``col_group`` equal to the block gives every block its own
columns, as GRIM does, run as a ``batch_matmul`` over the blocks, which IREE
3.13 runs far slower than one matmul of the same FLOPs (each block packs its
own gathered input): at bcr's default ratios it made BERT- and ResNet-18-shaped
models slower than dense, while after ``admm`` it kept no more top-1 than the
shared columns on the digits models (README "Things measured here"). It keeps
more where only columns are pruned hard (the digits LSTM at col_keep 0.25,
row_keep 1).

When every column is kept the gather is dropped and one matmul ``x · Wc``
(Wc: in × nb·rb) computes all blocks; when every row is kept the scatter is a
transpose (blocks are contiguous rows), which IREE folds into the matmul. A
convolution gathers straight from the (padded) image, so im2col and the column
selection are one op, and keeps pixels innermost throughout (``Wcᵀ · Xg``,
NCHW out), so its gather and scatter copy contiguous runs of pixels. Blocks
are of rows only: GRIM's optional column blocks are not built (METHODS.md); a
group's kept columns may lie anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Literal

import numpy as np
from torch_mlir import ir
from torch_mlir.dialects import arith, tensor

from optc.api import LayerMethod, MethodContext, Plan, SelectionOptions, Skip, SkipReason, activation_scores, option
from optc.hookspecs import hookimpl
from optc.program import Layer, LayerRewriter, Program, WeightedOp, shape_of
from optc.storage import Layout
from optc.structures import BlockColumnRow, KernelBasis


@dataclass
class BcrOptions(SelectionOptions):
    OVERRIDABLE = ("block", "col_keep", "row_keep", "col_group")

    block: int = option(16, "rows (outputs) per block; a layer whose rows it does not divide is skipped (an error when named in layers/override); 0 = one block of all rows")
    col_keep: float = option(0.5, "fraction of columns (inputs) each block keeps, in (0, 1]")
    row_keep: float = option(0.5, "fraction of rows (outputs) each block keeps, in (0, 1]")
    col_group: int = option(0, "rows (outputs) that share one set of kept columns, a multiple of block; 0 = the whole layer (one gather and one matmul: the fast form); the block size = GRIM's own columns per block (a batched matmul over blocks: slower, more accurate when only columns are pruned hard)")
    score: Literal["auto", "magnitude", "activation"] = option(
        "auto", "importance: weight L2 norm (magnitude) or weight × input-activation norm (activation, needs --calib); auto = activation when --calib is given"
    )

    def validate(self) -> None:
        for key in ("col_keep", "row_keep"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise ValueError(f"{key}={getattr(self, key)}: keep rates must be in (0, 1]")
        if self.block < 0:
            raise ValueError(f"block={self.block}: must be an integer >= 1 (or 0: one block of all rows)")
        if self.col_group < 0:
            raise ValueError(f"col_group={self.col_group}: must be an integer >= 1 (a multiple of block, or 0: the whole layer)")
        super().validate()


def choose_blocks(
    matrix: np.ndarray, block: int, kc: int, rb: int, gram: np.ndarray | None, group: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(cols ng×kc, rows nb×rb), both sorted: per group of ``group`` rows (default:
    one block) the kc columns and then per block the rb rows (within its group's
    kept columns) of largest importance. With a Gram matrix G = X·Xᵀ of the
    layer's inputs, importance is the norm of the weights' output contribution:
    column c scores ‖W_g[:, c]‖²·G[c, c], row r scores w·G·wᵀ."""
    n, k = matrix.shape
    nb, group = n // block, group or block
    w = matrix.astype(np.float64)
    col_score = (w.reshape(n // group, group, k) ** 2).sum(axis=1) * (np.diag(gram)[None, :] if gram is not None else 1.0)
    cols = np.sort(np.argsort(-col_score, axis=1, kind="stable")[:, :kc], axis=1)
    row_score = np.empty(n)
    for gi, gcols in enumerate(cols):  # one matrix product per group (not per block: BLAS, not einsum's loops)
        wg = w[gi * group:(gi + 1) * group][:, gcols]
        row_score[gi * group:(gi + 1) * group] = ((wg @ gram[np.ix_(gcols, gcols)]) * wg).sum(axis=1) if gram is not None else (wg**2).sum(axis=1)
    rows = np.sort(np.argsort(-row_score.reshape(nb, block), axis=1, kind="stable")[:, :rb], axis=1)
    return cols, rows


class Bcr(LayerMethod):
    name = "bcr"
    summary = "block-based column-row pruning (GRIM): per row block, gather kept inputs and run a compact matmul"
    Options = BcrOptions

    def start(self, program: Program, options: BcrOptions, ctx: MethodContext) -> None:
        activation_scores(self.name, options.score, ctx)  # fail before any layer is planned

    def admissible(self, layer: Layer) -> Skip | None:
        coef = _penni_coefficients(layer)
        if coef is None:
            return super().admissible(layer)
        return coef if isinstance(coef, Skip) else None

    def plan(self, layer: Layer, options: BcrOptions, ctx: MethodContext) -> Plan | Skip:
        coef = _penni_coefficients(layer)
        if coef is not None:
            return self._plan_matrix(layer, coef.matrix, options, ctx, coef)
        if layer.kind not in ("matmul", "batch_matmul", "conv2d"):
            return Skip(SkipReason.UNSUPPORTED, f"{layer.kind} (bcr prunes dense matmuls and convolutions)")
        return self._plan_matrix(layer, layer.matrix(), options, ctx, None)

    def _plan_matrix(self, layer: Layer, matrix: np.ndarray, options: BcrOptions, ctx: MethodContext, coef: "_Coefficients | None") -> Plan | Skip:
        n, k = matrix.shape
        block = options.block or n
        if block > n or n % block:
            return Skip(SkipReason.DOES_NOT_FIT, f"block={block} does not fit layer {layer.name} ({n} output rows): use a block size "
                        f"dividing {n}, bcr.override={layer.name}:block=N, or bcr.skip={layer.name}")
        group = options.col_group or n
        if group % block or n % group:
            return Skip(SkipReason.DOES_NOT_FIT, f"col_group={group} does not fit layer {layer.name} ({n} output rows, block {block}): "
                        f"use a multiple of the block dividing {n}, bcr.override={layer.name}:col_group=N, or bcr.skip={layer.name}")
        kc, rb = max(1, round(k * options.col_keep)), max(1, round(block * options.row_keep))
        use_gram = activation_scores(self.name, options.score, ctx)
        gram = (coef.gram(ctx.calibration.gram(layer.name)) if coef else ctx.calibration.gram(layer.name)) if use_gram else None
        cols, rows = choose_blocks(matrix, block, kc, rb, gram, group)
        structure = BlockColumnRow((n, k), block, cols[:1] if kc == k else cols, rows)  # every column kept: shared
        details = {"block": block, "blocks": n // block, "col_groups": len(structure.cols), "cols_kept": kc, "rows_kept": rb, "in": k, "out": n,
                   "density": kc * rb * (n // block) / (n * k), "score": "activation" if use_gram else "magnitude", "ops": len(coef.uses if coef else layer.uses)}
        action = f"pruned to {n // block} blocks × {kc} cols × {rb} rows" + (" (penni's coefficient 1×1 conv)" if coef else "")
        return Plan(action, details, structure=structure, matrix=matrix, coef=coef)

    def rewrite(self, layer: Layer, plan: Plan, rw: LayerRewriter) -> np.ndarray:
        s: BlockColumnRow = plan.structure
        coef: _Coefficients | None = plan.coef
        compact = rw.constant("bcr", s.compact(plan.matrix).astype(np.float32))
        uses = coef.uses if coef else layer.uses
        tables = _Tables(rw, s, uses[0])
        rw.each_use(lambda w, build: _rewrite(build, w, s, compact, tables), uses)
        param = rw.program.trace_param(compact)[0]
        if coef is None:
            rw.publish(s, plan.matrix, param, Layout(s.compact))
            return layer.from_matrix(s.apply(plan.matrix))
        # penni's structure stays, with bcr's mask on the coefficients, so admm can still re-solve them
        kept = coef.full(s.mask())
        rw.publish(KernelBasis(coef.basis.bases, kept, 1), coef.full(plan.matrix), param, Layout(lambda m: s.compact(m[:, coef.maps])))
        return layer.from_matrix(coef.full(s.apply(plan.matrix)))


@dataclass
class _Coefficients:
    """The 1×1 coefficient conv of a dense conv penni decomposed: bcr prunes it
    as a matrix over the basis maps the program computes (``maps``)."""

    uses: list[WeightedOp]
    basis: KernelBasis
    maps: np.ndarray  # the used columns of penni's coefficient matrix (input channel·nb + basis)
    matrix: np.ndarray  # out × len(maps): the coefficients as stored

    def full(self, m: np.ndarray) -> np.ndarray:
        """``m`` (out × len(maps)) in penni's coefficient space (out × in_channels·nb)."""
        out = np.zeros(self.basis.shape, dtype=m.dtype)
        out[:, self.maps] = m
        return out

    def gram(self, layer_gram: np.ndarray) -> np.ndarray:
        """E[m·mᵀ] of the basis maps, from the layer's im2col input moments."""
        t = self.basis.input_map()[:, self.maps]
        return t.T @ layer_gram @ t


def _penni_coefficients(layer: Layer) -> "_Coefficients | Skip | None":
    """The coefficient conv of a layer penni rewrote (None: not penni's), or why bcr cannot prune it."""
    ls = layer.structure
    if ls is None or not isinstance(ls.structure, KernelBasis):
        return None
    if ls.structure.groups != 1:
        return Skip(SkipReason.UNSUPPORTED, "penni's grouped coefficient conv (bcr prunes dense matmuls and convolutions)")
    uses = [w for w in layer.uses if w.param == ls.param]
    if not uses or layer.program.params[ls.param].dtype != np.float32:
        return Skip(SkipReason.ALREADY_REWRITTEN, "penni's coefficients are no longer a float32 1×1 conv (bcr goes before admm)")
    maps = ls.structure.maps()[0]
    return _Coefficients(uses, ls.structure, maps, uses[0].matrix(layer.program.params[ls.param]))


def row_positions(s: BlockColumnRow) -> tuple[np.ndarray, np.ndarray]:
    """(blk, pos) per output row: its column group, and its compact channel
    inside the group (-1: pruned). A group's kept rows are numbered in order."""
    n = s.shape[0]
    blk = np.arange(n, dtype=np.int32) // (n // s.groups)
    pos = np.full(n, -1, dtype=np.int32)
    per_group = s.blocks // s.groups
    for b, rows in enumerate(s.out_rows()):
        pos[rows] = np.arange(len(rows)) + (b % per_group) * len(rows)
    return blk, pos


LANES = 16  # output rows per scatter window: one AVX-512 vector of f32


@dataclass
class ScatterWindows:
    """A matmul's scatter, cut into windows of ``lanes`` consecutive output rows
    (of one column group). Numbered in order, a window's kept rows are
    consecutive compact channels, so all lie within ``width`` channels of the
    window's ``start``: row l of window t is channel start[t] + off[t, l] of
    group grp[t] (off -1: pruned)."""

    lanes: int
    width: int
    grp: np.ndarray  # per window
    start: np.ndarray  # per window
    off: np.ndarray  # windows × lanes

    @classmethod
    def of(cls, s: BlockColumnRow) -> "ScatterWindows":
        blk, pos = row_positions(s)
        lanes = next(c for c in (LANES, 8, 4, 2, 1) if (s.shape[0] // s.groups) % c == 0)
        channels = s.group_channels
        p = pos.reshape(-1, lanes)
        kept = p >= 0
        width = max(1, int(kept.sum(axis=1).max()))
        start = np.minimum(np.where(kept, p, channels).min(axis=1), channels - width)  # reads start + j (j < width) stay in bounds
        return cls(lanes, width, blk[::lanes].copy(), start.astype(np.int32), np.where(kept, p - start[:, None], -1).astype(np.int32))


class _Tables:
    """Index constants shared by every use of one pruned layer, each made on
    first use (a conv and a matmul read different ones)."""

    def __init__(self, rw: LayerRewriter, s: BlockColumnRow, first: WeightedOp):
        self.rw, self.s, self.first = rw, s, first

    @cached_property
    def cols(self) -> ir.Value:
        """groups×kc: the input columns a matmul's gather reads."""
        return self.rw.constant("bcr_cols", self.s.cols.astype(np.int32))

    @cached_property
    def rows(self) -> tuple[ir.Value, ir.Value]:
        """row_positions(), for a conv's scatter."""
        return tuple(self.rw.constant(f"bcr_{tag}", a) for tag, a in zip(("block", "pos"), row_positions(self.s)))

    @cached_property
    def conv_cols(self) -> tuple[ir.Value, ir.Value, ir.Value]:
        """Per kept column (groups×kc): its input channel and kernel row and column offsets (dilated)."""
        _, _, kh, kw = self.first.weight_shape
        dil = [int(d) for d in np.array(self.first.op.attributes["dilations"])]
        ch, rest = np.divmod(self.s.cols, kh * kw)
        r, q = np.divmod(rest, kw)
        return tuple(self.rw.constant(f"bcr_{tag}", a.astype(np.int32)) for tag, a in (("channel", ch), ("row", r * dil[0]), ("col", q * dil[1])))

    @cached_property
    def windows(self) -> "_WindowTables":
        w = ScatterWindows.of(self.s)
        return _WindowTables(w.lanes, w.width, *(self.rw.constant(f"bcr_window_{tag}", a) for tag, a in (
            ("group", w.grp), ("start", w.start), ("anchor", np.zeros(len(w.start), dtype=np.float32)), ("offset", w.off))))


@dataclass
class _WindowTables:
    """ScatterWindows as the program's constants."""

    lanes: int
    width: int
    grp: ir.Value
    start: ir.Value
    anchor: ir.Value  # zeros per window: an operand indexed by the window alone
    off: ir.Value


def _rewrite(build: Any, w: WeightedOp, s: BlockColumnRow, compact: ir.Value, t: _Tables) -> ir.Value:
    """One use of the pruned weight as gather → compact (batch) matmul → scatter."""
    op = w.op
    x, init = op.operands[0], op.operands[2]
    g, kc = s.cols.shape
    width = s.group_channels
    f32 = ir.RankedTensorType(init.type).element_type
    if w.kind == "conv2d":
        return _rewrite_conv(build, x, init, [int(d) for d in np.array(op.attributes["strides"])], compact, t, g, kc, width, f32)
    xs = shape_of(x)
    lead = xs[:-1]
    x2 = build.collapse(x, [list(range(len(xs) - 1)), [len(xs) - 1]]) if len(xs) > 2 else x
    rows_x = x2 if s.shared else _gather_columns(build, x2, t.cols, g, kc, f32)
    m = int(np.prod(lead))
    if g == 1:
        # One matmul: one column group puts every block's channels side by
        # side, with no batch dim (IREE's batch_matmul is slower than a matmul
        # of the same FLOPs).
        lhs = build.collapse(rows_x, [[0, 1], [2]]) if len(shape_of(rows_x)) == 3 else rows_x
        y = build.matmul(lhs, compact, build.zeros((m, width), like=init))
        y = build.expand(y, [list(range(len(lead) + 1)), [len(lead) + 1]], (1, *lead, width))
    else:
        y = build.batch_matmul(rows_x, compact, build.zeros((g, m, width), like=init))
        if len(lead) > 1:
            y = build.expand(y, [[0], list(range(1, len(lead) + 1)), [len(lead) + 1]], (g, *lead, width))
    if s.keeps_all_rows:
        return _interleave(build, y, init)
    if m == 1:
        # one row (an RNN step at batch 1): a few vectors, which the per-row
        # scatter fuses into its consumer (the gates); windows cost a dispatch
        return _scatter_rows(build, y, init, t.windows)
    return _expand_rows(build, y, init, t.windows)


def _rewrite_conv(build: Any, x: ir.Value, init: ir.Value, stride: list[int], compact: ir.Value, t: _Tables, g: int, kc: int, width: int, f32: ir.Type) -> ir.Value:
    """A pruned NCHW convolution with pixels innermost throughout, so that every
    data-dependent index (a kept column's channel and offset, a kept row's
    position) is fixed along a contiguous run of pixels, which IREE vectorizes
    as plain loads; with the channel innermost each element was its own scalar
    load (a third of bcr's ResNet-18 time):

        Xg[b, c, n, i, j] = x[n, ch[b, c], i·sh + dh[b, c], j·sw + dw[b, c]]   im2col of the kept columns
        Y[b] = Wc[b]ᵀ · Xg[b]                                                 (width × kc)·(kc × pixels)
        out[n, o, i, j] = init + Y[blk[o], pos[o], n, i, j]                   pruned rows add nothing"""
    nn, _, oh, ow = shape_of(init)
    pixels = nn * oh * ow
    idx = ir.IndexType.get()
    # Both generics also read this (as v + 0·row): an operand indexed by the
    # output row alone keeps IREE from collapsing rows and columns into one
    # dim, whose div/rem would make every pixel's index data-dependent again.
    rows = build.constant("bcr_rows", np.arange(1, oh + 1, dtype=np.float32))
    zero = lambda: arith.ConstantOp(f32, 0.0).result  # noqa: E731

    def kept_column(row: ir.Value, _out: ir.Value) -> ir.Value:
        b, c = build.index(0), build.index(1)
        ch, dh, dw = (build.to_index(tensor.ExtractOp(table, [b, c]).result) for table in t.conv_cols)

        def pos(dim: int, step: int, off: ir.Value) -> ir.Value:
            return arith.AddIOp(arith.MulIOp(build.index(dim), arith.ConstantOp(idx, step).result).result, off).result

        v = tensor.ExtractOp(x, [build.index(2), ch, pos(3, stride[0], dh), pos(4, stride[1], dw)]).result
        return arith.AddFOp(v, arith.MulFOp(row, zero()).result).result

    gathered = build.generic([rows], tensor.EmptyOp([g, kc, nn, oh, ow], f32).result,
                             ["(b, c, n, i, j) -> (i)", "(b, c, n, i, j) -> (b, c, n, i, j)"], kept_column)
    if g == 1:
        y = build.matmul(build.transpose(compact, [1, 0]), build.collapse(gathered, [[0, 1], [2, 3, 4]]), build.zeros((width, pixels), like=init))
        y = build.expand(y, [[0, 1], [2, 3, 4]], (1, width, nn, oh, ow))
    else:
        wt = build.transpose(compact, [0, 2, 1])
        y = build.batch_matmul(wt, build.collapse(gathered, [[0], [1], [2, 3, 4]]), build.zeros((g, width, pixels), like=init))
        y = build.expand(y, [[0], [1], [2, 3, 4]], (g, width, nn, oh, ow))

    def scattered(row: ir.Value, acc: ir.Value) -> ir.Value:
        blk, p = (tensor.ExtractOp(table, [build.index(1)]).result for table in t.rows)

        def read(safe: ir.Value) -> ir.Value:
            v = tensor.ExtractOp(y, [build.to_index(blk), safe, build.index(0), build.index(2), build.index(3)]).result
            return arith.AddFOp(v, arith.MulFOp(row, zero()).result).result

        return arith.AddFOp(acc, _kept_row(build, p, read, f32)).result

    return build.generic([rows], init, ["(n, o, i, j) -> (i)", "(n, o, i, j) -> (n, o, i, j)"], scattered)


def _gather_columns(build: Any, x2: ir.Value, cols: ir.Value, nb: int, kc: int, f32: ir.Type) -> ir.Value:
    """Xg[b, m, c] = x[m, cols[b, c]]."""
    m = shape_of(x2)[0]

    def body(col: ir.Value, _out: ir.Value) -> ir.Value:
        return tensor.ExtractOp(x2, [build.index(1), build.to_index(col)]).result

    return build.generic([cols], tensor.EmptyOp([nb, m, kc], f32).result, ["(b, m, c) -> (b, c)", "(b, m, c) -> (b, m, c)"], body)


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


def _expand_rows(build: Any, y: ir.Value, init: ir.Value, w: _WindowTables) -> ir.Value:
    """out[…, o] = init + Y[grp, …, pos[o]] for kept output rows o (the last
    dim), init for pruned ones. ``y`` is (groups, *lead, channels).

    Iterated as (*lead, window, lane), each lane selects among its window's
    ``width`` channels start + j, whose index is the same in every lane: a
    broadcast load, so the op vectorizes. Indexed per output row (Y[…, pos[o]]),
    every element is a scalar load and an insert: 52 against 19 µs a call on
    the BERT-shaped encoder's FFN (README)."""
    shape = shape_of(init)
    lead = shape[:-1]
    rank = len(shape) + 1
    split = [[d] for d in range(len(lead))] + [[len(lead), len(lead) + 1]]
    out = build.expand(init, split, (*lead, shape[-1] // w.lanes, w.lanes))
    dims = ", ".join(f"d{i}" for i in range(rank))
    win, lane = f"d{rank - 2}", f"d{rank - 1}"
    f32 = ir.RankedTensorType(init.type).element_type
    i32, idx = ir.IntegerType.get_signless(32), ir.IndexType.get()

    def body(anchor: ir.Value, off: ir.Value, acc: ir.Value) -> ir.Value:
        g, start = (build.to_index(tensor.ExtractOp(table, [build.index(rank - 2)]).result) for table in (w.grp, w.start))
        at = [g, *(build.index(d) for d in range(len(lead)))]
        v = arith.ConstantOp(f32, 0.0).result
        for j in range(w.width):
            read = tensor.ExtractOp(y, [*at, arith.AddIOp(start, arith.ConstantOp(idx, j).result).result]).result
            v = arith.SelectOp(arith.CmpIOp(arith.CmpIPredicate.eq, off, arith.ConstantOp(i32, j).result).result, read, v).result
        # + anchor (0): an operand indexed by the window alone keeps IREE from
        # collapsing window and lane into one dim, whose div/rem would make
        # the reads' index differ per lane again
        return arith.AddFOp(acc, arith.AddFOp(v, anchor).result).result

    res = build.generic([w.anchor, w.off], out, [f"({dims}) -> ({win})", f"({dims}) -> ({win}, {lane})", f"({dims}) -> ({dims})"], body)
    return build.collapse(res, split)


def _scatter_rows(build: Any, y: ir.Value, init: ir.Value, w: _WindowTables) -> ir.Value:
    """_expand_rows' result indexed per output row o (window o // lanes): a
    scalar load per element, which fuses into a consumer of the same shape."""
    rank = len(shape_of(init))
    dims = ", ".join(f"d{i}" for i in range(rank))
    f32 = ir.RankedTensorType(init.type).element_type

    def body(p: ir.Value, acc: ir.Value) -> ir.Value:
        t = arith.DivUIOp(build.index(rank - 1), arith.ConstantOp(ir.IndexType.get(), w.lanes).result).result
        g, first = (build.to_index(tensor.ExtractOp(table, [t]).result) for table in (w.grp, w.start))
        lead = [build.index(i) for i in range(rank - 1)]
        read = lambda safe: tensor.ExtractOp(y, [g, *lead, arith.AddIOp(first, safe).result]).result  # noqa: E731
        return arith.AddFOp(acc, _kept_row(build, p, read, f32)).result

    return build.generic([build.collapse(w.off, [[0, 1]])], init, [f"({dims}) -> (d{rank - 1})", f"({dims}) -> ({dims})"], body)


def _kept_row(build: Any, p: ir.Value, read: Callable[[ir.Value], ir.Value], f32: ir.Type) -> ir.Value:
    """A scatter's value for an output row at compact position ``p`` (i32; -1:
    pruned): ``read(p)`` for a kept row, 0 for a pruned one, which is read at 0
    so that no index is out of bounds."""
    i32 = ir.IntegerType.get_signless(32)
    zero_i = arith.ConstantOp(i32, 0).result
    kept = arith.CmpIOp(arith.CmpIPredicate.sge, p, zero_i).result
    v = read(build.to_index(arith.SelectOp(kept, p, zero_i).result))
    return arith.SelectOp(kept, v, arith.ConstantOp(f32, 0.0).result).result


@hookimpl
def optc_register_methods(register):
    register(Bcr())
