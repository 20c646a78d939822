"""``--plugins antman``: structured-sparse and low-rank RNN gate matmuls.

AntMan ("Sparse Low-Rank Compression to Accelerate RNN Inference") replaces
each LSTM/GRU gate matmul by cheaper structured forms. Per matrix (out×in,
``override`` chooses per layer) one of:

- **groups** G: a block-diagonal matmul of G groups. The inputs are dealt to
  the groups by a fixed interleave (channel c goes to group c mod G) while the
  outputs are contiguous, so a hidden state fed back through a grouped
  hidden-to-hidden matmul reaches every group within a few steps. MACs ÷ G.
  Rewrite: x[N, in] viewed as [N, in/G, G] and transposed to [G, N, in/G]
  (the interleave), one ``batch_matmul`` with [G, in/G, out/G] blocks,
  transposed back to [N, out].
- **rank** r (or ``reduction``: r = in·out / (reduction·(in+out))): x·A·B.

Without ``--calib`` the factors are the truncated SVD and the blocks are W's
own entries. With it, both are fitted to the gate pre-activations on the
layer's real inputs: minimize ‖W·X − Ŵ·X̃‖² where X are the inputs of the
original model and X̃ those of the compressed one (equal in the first pass).
With C = E[x̃x̃ᵀ] and D = E[x·x̃ᵀ], the best rank-r Ŵ is the rank-r SVD of
W·D·C^{-1/2} times C^{-1/2}; the best block-diagonal Ŵ solves each block's
least squares on its rows and columns. ``passes`` re-fits every layer on the
inputs that the previous pass's weights produce (the recurrence feeds each
step's error into the next). Each factor/block constant is shared by all steps.

A rank r that does not cut MACs (r·(in+out) >= in·out) is skipped as not
profitable unless ``force``. Both forms are published as structures, so
``--plugins antman,admm`` re-solves and quantizes them: the groups' blocks
(bcr's block-column structure), or the output factor B of x·A·B on the inputs
x·A (``LowRankFactors``; A stays float32).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Optional

import numpy as np

from optc.api import LayerMethod, MethodContext, Plan, SelectionOptions, Skip, SkipReason, option
from optc.builder import is_zero_fill
from optc.calibration import LayerData, solve_in_order
from optc.errors import OptionError
from optc.hookspecs import hookimpl
from optc.program import Layer, LayerRewriter, shape_of
from optc.storage import Layout
from optc.structures import BlockColumnRow, LowRankFactors

GATE_PATTERNS = ("*weight_ih*", "*weight_hh*")  # torch's RNN/RNNCell gate weights


@dataclass
class AntManOptions(SelectionOptions):
    OVERRIDABLE = ("groups", "rank", "reduction")

    groups: int = option(1, "block-diagonal groups per gate matrix (inputs interleaved across groups); must divide in and out")
    rank: Optional[int] = option(None, "low-rank factors x·A·B of this rank (capped at min(in, out))")
    reduction: Optional[float] = option(None, "low rank chosen so each matrix's MACs shrink by this factor, > 1 (overrides rank)")
    passes: int = option(2, "with --calib: fit every layer this many times, each pass on the inputs the previous pass's weights produce (the second pass sees the recurrence the fitted weights produce)")
    damp: float = option(1e-6, "with --calib: added to diag(E[x·xᵀ]), relative to its mean, so rank-deficient inputs still solve")
    force: bool = option(False, "factor even where rank·(in+out) >= in·out, i.e. not cheaper (to check the rewrite is exact)")

    def validate(self) -> None:
        if self.groups < 1:
            raise ValueError(f"groups={self.groups}: must be an integer >= 1")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank={self.rank}: must be an integer >= 1")
        if self.reduction is not None and not self.reduction > 1.0:
            raise ValueError(f"reduction={self.reduction}: must be > 1")
        if self.passes < 1:
            raise ValueError(f"passes={self.passes}: must be >= 1")
        if self.damp < 0:
            raise ValueError(f"damp={self.damp}: must be >= 0")
        super().validate()

    @property
    def low_rank(self) -> bool:
        return self.rank is not None or self.reduction is not None


# ----------------------------------------------------------------------------- fitting


def _inv_sqrt(c: np.ndarray, damp: float) -> np.ndarray:
    """C^{-1/2} of a symmetric PSD matrix, damped relative to its mean diagonal."""
    lam = damp * max(float(np.mean(np.diag(c))), 1e-30)
    vals, vecs = np.linalg.eigh(c + lam * np.eye(len(c)))
    return (vecs / np.sqrt(np.maximum(vals, 1e-30))) @ vecs.T


def fit_low_rank(w: np.ndarray, rank: int, stats: tuple[np.ndarray, np.ndarray] | None = None, damp: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """A (in×r), B (r×out) with Ŵᵀ = A·B minimizing ‖W·X − Ŵ·X̃‖² for
    ``stats`` = (C = E[x̃x̃ᵀ], W·E[x·x̃ᵀ]); without stats the truncated SVD of W."""
    w = w.astype(np.float64)
    if stats is None:
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        return (vt[:rank].T * s[:rank]), u[:, :rank].T
    c, target = stats
    c_isqrt = _inv_sqrt(c, damp)
    u, s, vt = np.linalg.svd(target @ c_isqrt, full_matrices=False)
    return c_isqrt @ (vt[:rank].T * s[:rank]), u[:, :rank].T


def group_layout(out_dim: int, in_dim: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) per group: contiguous output rows, interleaved input columns (c mod G)."""
    rows = np.arange(out_dim).reshape(groups, out_dim // groups)
    cols = np.arange(in_dim).reshape(in_dim // groups, groups).T
    return rows, cols


def fit_groups(w: np.ndarray, groups: int, stats: tuple[np.ndarray, np.ndarray] | None = None, damp: float = 1e-6) -> np.ndarray:
    """The [G, in/G, out/G] blocks of the block-diagonal Ŵ (x·block per group):
    W's own entries, or each block's least squares fit with ``stats`` (C, W·D) as in fit_low_rank."""
    w = w.astype(np.float64)
    rows, cols = group_layout(*w.shape, groups)
    blocks = []
    for r, k in zip(rows, cols):
        if stats is None:
            blocks.append(w[np.ix_(r, k)].T)
        else:
            c, target = stats
            ck = c[np.ix_(k, k)]
            lam = damp * max(float(np.mean(np.diag(ck))), 1e-30)
            rhs = target[np.ix_(r, k)].T  # (in/G)×(out/G)
            blocks.append(np.linalg.solve(ck + lam * np.eye(len(k)), rhs))
    return np.stack(blocks)


def groups_dense(blocks: np.ndarray, out_dim: int, in_dim: int) -> np.ndarray:
    """The out×in matrix of a block-diagonal form (zeros outside the blocks)."""
    groups = blocks.shape[0]
    rows, cols = group_layout(out_dim, in_dim, groups)
    w = np.zeros((out_dim, in_dim), dtype=np.float64)
    for g in range(groups):
        w[np.ix_(rows[g], cols[g])] = blocks[g].T
    return w


def gate_error(w: np.ndarray, w_hat: np.ndarray, gram: np.ndarray) -> float:
    """E‖(W − Ŵ)·x‖² for inputs with second moment ``gram``: the gate pre-activation error."""
    e = (w - w_hat).astype(np.float64)
    return float(np.trace(e @ gram @ e.T))


def low_rank(out_dim: int, in_dim: int, opts: AntManOptions) -> int:
    """The rank of the factors: ``rank`` or the one that cuts MACs by ``reduction``, at most min(in, out)."""
    full = min(in_dim, out_dim)
    if opts.reduction is not None:
        return max(1, min(full, int(in_dim * out_dim / (opts.reduction * (in_dim + out_dim)))))
    return min(opts.rank, full)


def group_structure(out_dim: int, in_dim: int, groups: int) -> BlockColumnRow:
    """The grouped form as bcr's structure: a block of out/G rows per group, all
    its rows kept, reading its interleaved columns; ``compact`` is the [G, in/G, out/G] blocks."""
    rows, cols = group_layout(out_dim, in_dim, groups)
    return BlockColumnRow((out_dim, in_dim), out_dim // groups, cols, np.tile(np.arange(out_dim // groups), (groups, 1)))


# ----------------------------------------------------------------------------- method


class AntMan(LayerMethod):
    name = "antman"
    summary = "AntMan: RNN gate matmuls as block-diagonal (interleaved groups) or low-rank forms, fitted on --calib data when given"
    Options = AntManOptions

    def admissible(self, layer: Layer) -> Skip | None:
        if layer.uses[0].conv:
            return Skip(SkipReason.UNSUPPORTED, f"{layer.kind} (antman rewrites matmul gate weights)")
        return layer.problem

    def plan_layers(self, layers: list[Layer], options: AntManOptions, ctx: MethodContext) -> list[Plan | Skip]:
        plans: dict[str, Plan | Skip] = {}
        todo = []
        for layer in layers:
            opts = options.for_layer(layer.name)
            skip = self._refuse(layer, options, opts)
            if skip is not None:
                plans[layer.name] = skip
            else:
                todo.append((layer, opts, layer.matrix()))
        matrices = {layer.name: (opts, w) for layer, opts, w in todo}

        def fit(layer: Layer, data: LayerData | None) -> Plan:
            opts, w = matrices[layer.name]
            return self._fit(w, opts, (data.gcc.astype(np.float64), data.target.astype(np.float64)) if data is not None else None, fitted=data is not None)

        passes = options.passes if ctx.calibration is not None else 1
        plans.update(solve_in_order(self.name, [t[0] for t in todo], fit, ctx, sequential=True, passes=passes))
        return [plans[layer.name] for layer in layers]

    def _refuse(self, layer: Layer, options: AntManOptions, opts: AntManOptions) -> Skip | None:
        out_dim, in_dim = layer.shape
        if not options.layers and not any(fnmatch.fnmatchcase(layer.name, p) for p in GATE_PATTERNS):
            return Skip(SkipReason.NOT_SELECTED, "not an RNN gate weight (name it in antman.layers to compress it)")
        if opts.groups > 1 and opts.low_rank:
            raise OptionError(f"antman: layer {layer.name} has groups={opts.groups} and a rank/reduction: choose one form per matrix (antman.override=PATTERN:groups=G)")
        if opts.groups > 1 and (in_dim % opts.groups or out_dim % opts.groups):
            return Skip(SkipReason.DOES_NOT_FIT, f"groups={opts.groups} do not divide layer {layer.name} ({out_dim}×{in_dim})")
        if opts.groups == 1 and not opts.low_rank:
            return Skip(SkipReason.NOTHING_TO_DO, "groups=1 and no rank/reduction")
        if opts.groups > 1 or opts.force:
            return None
        if opts.reduction is not None and in_dim * out_dim < opts.reduction * (in_dim + out_dim):
            # even rank 1 misses the asked cut (a narrow matrix, e.g. a first layer's 8 inputs):
            # rank 1 would keep almost nothing of it for almost no saving
            return Skip(SkipReason.DOES_NOT_FIT, f"reduction={opts.reduction:g} needs a rank below 1 on {layer.name} ({out_dim}×{in_dim}); force=true rewrites it at rank 1")
        rank = low_rank(out_dim, in_dim, opts)
        if rank * (in_dim + out_dim) >= in_dim * out_dim:
            return Skip(SkipReason.NOT_PROFITABLE, f"rank {rank} factors of {layer.name} ({out_dim}×{in_dim}) need {rank * (in_dim + out_dim):,} MACs per row, the matrix {in_dim * out_dim:,}")
        return None

    def _fit(self, w: np.ndarray, opts: AntManOptions, stats: tuple[np.ndarray, np.ndarray] | None, fitted: bool) -> Plan:
        out_dim, in_dim = w.shape
        how = "fitted on calibration inputs" if fitted else "from the weights alone"
        if opts.groups > 1:
            blocks = fit_groups(w, opts.groups, stats, opts.damp)
            dense = groups_dense(blocks, out_dim, in_dim)
            details = {"form": "groups", "groups": opts.groups, "in": in_dim, "out": out_dim, "fitted": fitted}
            return Plan(f"{opts.groups} interleaved groups ({how})", details, blocks=blocks.astype(np.float32), dense=dense)
        rank = low_rank(out_dim, in_dim, opts)
        a, b = fit_low_rank(w, rank, stats, opts.damp)
        dense = (a @ b).T
        details = {"form": "low_rank", "rank": rank, "in": in_dim, "out": out_dim, "fitted": fitted}
        return Plan(f"rank {rank} ({how})", details, a=a.astype(np.float32), b=b.astype(np.float32), dense=dense)

    def rewrite(self, layer: Layer, plan: Plan, rw: LayerRewriter) -> np.ndarray:
        if plan.details["form"] == "groups":
            blocks = rw.constant("antman_groups", plan.blocks)
            groups, kg, og = plan.blocks.shape

            def grouped(w, b):
                x, init = w.op.operands[0], w.op.operands[2]
                xs = shape_of(x)
                n = int(np.prod(xs[:-1]))
                rows = b.collapse(x, [list(range(len(xs) - 1)), [len(xs) - 1]]) if len(xs) > 2 else x
                dealt = b.transpose(b.expand(rows, [[0], [1, 2]], (n, kg, groups)), [2, 0, 1])  # [G, N, in/G]
                y = b.batch_matmul(dealt, blocks, b.zeros((groups, n, og), like=x))
                y = b.collapse(b.transpose(y, [1, 0, 2]), [[0], [1, 2]])  # [N, out]
                if len(xs) > 2:
                    y = b.expand(y, [list(range(len(xs) - 1)), [len(xs) - 1]], shape_of(init))
                if is_zero_fill(init):
                    return y
                rank = len(shape_of(init))
                ident = "(" + ", ".join(f"d{i}" for i in range(rank)) + ")"
                return b.generic([init, y], b.empty(shape_of(y), y), [f"{ident} -> {ident}"] * 3, lambda p, q, _o: b.add(p, q))

            rw.each_use(grouped)
            s = group_structure(plan.details["out"], plan.details["in"], groups)
            rw.publish(s, plan.dense.astype(np.float32), rw.program.trace_param(blocks)[0], Layout(s.compact))
        else:
            _, out_factor = rw.factor_uses(plan.a, plan.b, "antman")
            s = LowRankFactors(plan.b.T, plan.a.T)  # admm re-solves U = Bᵀ on the inputs x·A
            rw.publish(s, s.u, rw.program.trace_param(out_factor)[0], Layout(lambda u: np.ascontiguousarray(u.T)))
        return layer.from_matrix(plan.dense.astype(np.float32))


@hookimpl
def optc_register_methods(register):
    register(AntMan())
