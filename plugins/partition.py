"""``--plugins partition``: Partition Pruning ("Parallelization-Aware Pruning for
Deep Neural Networks", Shahhosseini et al.).

A linear layer's out×in weight is pruned to ``parts`` = K independent
partitions: output rows and input columns are each split into K equal groups,
and only the weights inside a (row group p, column group p) block are kept —
block-diagonal after permuting rows and columns. Each partition then reads
only its own inputs and writes only its own outputs, so K accelerators compute
the layer with no data exchanged between them (``--target sim`` models that).

Choosing the groups: weight importance I[o, i] = W[o, i]² (with ``--calib``,
the output energy it carries: W[o, i]²·E[x_i²], the Gram diagonal). Starting
from contiguous groups, rows and columns are reassigned in turn: each row to
a group by the importance its group's columns give it, greedily in order of
that score with every group holding exactly out/K rows (a balanced
assignment), then the columns likewise given the rows; a few rounds, keeping
the best kept importance (never worse than the contiguous start).

Rewrite (per use of the weight, ``x`` of shape [..., in]):

    xg = gather(x, cols)            the K column groups, side by side (one linalg.generic)
    Xp = transpose(expand(xg))      K × rows × in/K
    Yp = batch_matmul(Xp, Wc)       Wc: K × in/K × out/K — K independent matmuls
    y  = init + gather(Yp, inverse row permutation)

K=1 keeps every weight (exact). A layer whose rows or columns K does not
divide is skipped (an error when named in ``layers``/``override``); only
matmul layers (linear, LSTM gates) are split: naming a convolution is an error.
The block-diagonal structure is published (``program.structures``), so
``--plugins partition,admm`` re-solves the kept weights on calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch_mlir import ir

from optc.api import LayerMethod, MethodContext, Plan, SelectionOptions, Skip, SkipReason, activation_scores, option
from optc.errors import OptionError
from optc.hookspecs import hookimpl
from optc.program import Layer, LayerRewriter, Program, WeightedOp, shape_of
from optc.storage import Layout
from optc.structures import INDEX_BYTES, Structure

ROUNDS = 8  # row/column reassignment rounds


@dataclass
class PartitionOptions(SelectionOptions):
    OVERRIDABLE = ("parts",)

    parts: int = option(4, "K: independent partitions per layer (must divide its inputs and outputs); 1 keeps every weight")
    score: Literal["auto", "magnitude", "activation"] = option(
        "auto", "importance: weight² (magnitude) or weight² × input energy (activation, needs --calib); auto = activation when --calib is given"
    )

    def validate(self) -> None:
        if self.parts < 1:
            raise ValueError(f"parts={self.parts}: must be an integer >= 1")
        super().validate()


@dataclass
class BlockDiagonal(Structure):
    """K partitions: row group ``rows[p]`` reads only column group ``cols[p]``
    (both K × size, sorted). The compact weight is K × in/K × out/K."""

    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray

    @property
    def parts(self) -> int:
        return len(self.rows)

    def mask(self) -> np.ndarray:
        m = np.zeros(self.shape, dtype=bool)
        for r, c in zip(self.rows, self.cols):
            m[np.ix_(r, c)] = True
        return m

    def compact(self, matrix: np.ndarray) -> np.ndarray:
        return np.stack([matrix[np.ix_(r, c)].T for r, c in zip(self.rows, self.cols)])

    def macs(self, rows: int = 1) -> int:
        return self.rows.size * self.cols.shape[1] * rows

    def nbytes(self, itemsize: int = 4) -> int:
        return self.macs() * itemsize + (self.rows.size + self.cols.size) * INDEX_BYTES  # values + both permutations


def _assign(score: np.ndarray, size: int) -> np.ndarray:
    """Balanced greedy assignment: items × groups scores -> a group per item,
    every group getting ``size`` items, highest scores first."""
    items, groups = score.shape
    order = np.argsort(-score, axis=None, kind="stable")
    group = np.full(items, -1)
    room = np.full(groups, size)
    for flat in order:
        i, g = divmod(int(flat), groups)
        if group[i] < 0 and room[g] > 0:
            group[i] = g
            room[g] -= 1
    return group


def _kept(importance: np.ndarray, rg: np.ndarray, cg: np.ndarray) -> float:
    return float(importance[rg[:, None] == cg[None, :]].sum())


def choose_partitions(importance: np.ndarray, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows K×out/K, cols K×in/K), sorted: groups whose diagonal blocks keep
    as much of ``importance`` (out×in, ≥ 0) as the alternating balanced
    assignment finds, starting from contiguous groups."""
    n, k = importance.shape
    rg, cg = np.arange(n) // (n // parts), np.arange(k) // (k // parts)
    best = (_kept(importance, rg, cg), rg, cg)
    for _ in range(ROUNDS):
        onehot_c = np.eye(parts)[cg]  # in × K
        rg = _assign(importance @ onehot_c, n // parts)
        onehot_r = np.eye(parts)[rg]  # out × K
        cg = _assign(importance.T @ onehot_r, k // parts)
        kept = _kept(importance, rg, cg)
        if kept > best[0] * (1 + 1e-12):
            best = (kept, rg, cg)
        else:
            break
    _, rg, cg = best
    rows = np.stack([np.flatnonzero(rg == p) for p in range(parts)])
    cols = np.stack([np.flatnonzero(cg == p) for p in range(parts)])
    return rows, cols


class Partition(LayerMethod):
    name = "partition"
    summary = "partition pruning: a layer becomes K independent block-diagonal partitions (one batch_matmul of K matmuls, no data exchanged)"
    Options = PartitionOptions

    def start(self, program: Program, options: PartitionOptions, ctx: MethodContext) -> None:
        activation_scores(self.name, options.score, ctx)  # fail before any layer is planned

    def plan(self, layer: Layer, options: PartitionOptions, ctx: MethodContext) -> Plan | Skip:
        if layer.kind not in ("matmul", "batch_matmul"):
            skip = Skip(SkipReason.UNSUPPORTED, f"{layer.kind} (partition splits matmul layers: linear, LSTM gates)")
            if options.names(layer.name):
                raise OptionError(f"partition: cannot split layer {layer.name}: {skip.detail}")
            return skip
        matrix = layer.matrix()
        n, k = matrix.shape
        parts = options.parts
        if n % parts or k % parts:
            return Skip(SkipReason.DOES_NOT_FIT, f"parts={parts} does not divide layer {layer.name} ({n} outputs × {k} inputs): use a K dividing both, "
                        f"partition.override={layer.name}:parts=N, or partition.skip={layer.name}")
        use_gram = activation_scores(self.name, options.score, ctx)
        importance = matrix.astype(np.float64) ** 2
        if use_gram:
            importance = importance * np.clip(np.diag(ctx.calibration.gram(layer.name)), 0, None)[None, :]
        rows, cols = choose_partitions(importance, parts)
        s = BlockDiagonal((n, k), rows, cols)
        total = float(importance.sum())
        kept = float(importance[s.mask()].sum())
        details = {"parts": parts, "in": k, "out": n, "density": 1 / parts, "importance_kept": kept / total if total > 0 else 1.0,
                   "score": "activation" if use_gram else "magnitude", "ops": len(layer.uses)}
        return Plan(f"split into {parts} partitions of {n // parts}×{k // parts}", details, structure=s, matrix=matrix)

    def rewrite(self, layer: Layer, plan: Plan, rw: LayerRewriter) -> np.ndarray:
        s: BlockDiagonal = plan.structure
        compact = rw.constant("partition", s.compact(plan.matrix).astype(np.float32))
        cols = rw.constant("partition_cols", s.cols.reshape(-1).astype(np.int32))
        # output o sits at position inverse[o] of the partitions' outputs laid side by side
        inverse = rw.constant("partition_out_positions", np.argsort(s.rows.reshape(-1)).astype(np.int32))
        rw.each_use(lambda w, build: _rewrite(build, w, s, compact, cols, inverse))
        rw.publish(s, plan.matrix, rw.program.trace_param(compact)[0], Layout(s.compact))
        return layer.from_matrix(s.apply(plan.matrix))


def _rewrite(build: Any, w: WeightedOp, s: BlockDiagonal, compact: ir.Value, cols: ir.Value, inverse: ir.Value) -> ir.Value:
    """One use ``init + x·W`` as gather → K independent matmuls → un-permute."""
    x, init = w.op.operands[0], w.op.operands[2]
    xs, out_shape = shape_of(x), shape_of(init)
    parts, (n, k) = s.parts, s.shape
    lead = [list(range(len(xs) - 1)), [len(xs) - 1]]
    x2 = build.collapse(x, lead) if len(xs) > 2 else x
    m = shape_of(x2)[0]
    xg = build.gather(x2, cols, 1)  # m × in, the partitions' columns side by side
    xp = build.transpose(build.expand(xg, [[0], [1, 2]], (m, parts, k // parts)), [1, 0, 2])
    yp = build.batch_matmul(xp, compact, build.zeros((parts, m, n // parts), like=init))
    y2 = build.collapse(build.transpose(yp, [1, 0, 2]), [[0], [1, 2]])  # m × out, partition order
    y = build.gather(y2, inverse, 1)
    if len(out_shape) > 2:
        y = build.expand(y, lead, out_shape)
    dims = ", ".join(f"d{i}" for i in range(len(out_shape)))
    return build.generic([y], init, [f"({dims}) -> ({dims})", f"({dims}) -> ({dims})"], lambda v, acc: build.add(acc, v))


@hookimpl
def optc_register_methods(register):
    register(Partition())
