"""``--plugins lowrank``: low-rank factorization by truncated SVD.

TRP ("Trained Rank Pruning") and "SVD training" factor a weight W (out×in) as
U·V of rank r. One matmul becomes two thinner ones, cheaper when
r·(in+out) < in·out. Here each selected linear/LSTM-gate matmul ``x·M`` (M is
in×out, the weight as the op reads it) becomes ``(x·A)·B`` with A = U_r·S_r
(in×r) and B = V_rᵀ (r×out); a weight used by many ops (an unrolled LSTM's
gates, one matmul per time step) gets one pair of factor constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from optc.api import LayerChange, Method, MethodContext, MethodResult, layer_selected, option
from optc.hookspecs import hookimpl
from optc.program import Program, apply_view, shape_of, unapply_view
from optc.svd import truncated_svd


@dataclass
class LowRankOptions:
    rank: Optional[int] = option(None, "rank r for every factored layer (overrides energy; capped at min(in, out))")
    reduction: Optional[float] = option(None, "choose each layer's rank so its FLOPs shrink by this factor (r = in·out / (reduction·(in+out))); overrides rank and energy")
    energy: float = option(0.9, "keep the smallest rank whose singular values hold this fraction of the squared norm, in (0, 1]")
    layers: tuple[str, ...] = option((), "only these layers (comma-separated fnmatch patterns on parameter names); empty = all")
    skip: tuple[str, ...] = option((), "never these layers (comma-separated fnmatch patterns)")
    force: bool = option(False, "factor even where it would not reduce FLOPs (to check the rewrite is exact)")

    def validate(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank={self.rank}: must be an integer >= 1")
        if self.reduction is not None and not self.reduction > 1.0:
            raise ValueError(f"reduction={self.reduction}: must be > 1")
        if not 0.0 < self.energy <= 1.0:
            raise ValueError(f"energy={self.energy}: must be in (0, 1]")


def choose_rank(singular_values: np.ndarray, options: LowRankOptions, k: int = 0, n: int = 0) -> int:
    """The rank for a K×N matrix with these singular values."""
    full = len(singular_values)
    if options.reduction is not None:
        return max(1, min(full, int(k * n / (options.reduction * (k + n)))))
    if options.rank is not None:
        return min(options.rank, full)
    energy = np.cumsum(singular_values.astype(np.float64) ** 2)
    if energy[-1] == 0:
        return 1
    return int(min(full, np.searchsorted(energy / energy[-1], options.energy - 1e-12) + 1))


def factor(svd: tuple[np.ndarray, np.ndarray, np.ndarray], rank: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """K×N ≈ A (K×r) · B (r×N) from the matrix's (float64) SVD."""
    u, s, vt = svd
    return (u[:, :rank] * s[:rank]).astype(dtype), vt[:rank].astype(dtype)


class LowRank(Method):
    name = "lowrank"
    summary = "low-rank factorization (truncated SVD): each linear/LSTM matmul becomes two thinner matmuls"
    Options = LowRankOptions

    def apply(self, program: Program, options: LowRankOptions, ctx: MethodContext) -> MethodResult:
        result = MethodResult(self.name)
        by_param = program.uses_by_param(lambda layer: layer_selected(layer, options.layers, options.skip))
        for param, uses in by_param.items():
            layer = uses[0].layer
            reason = program.matrix_problem(uses)
            if reason is None and uses[0].kind == "conv2d":
                reason = "conv2d (lowrank factors matmul weights; convolutions are not factored)"
            if reason:
                result.changes.append(LayerChange(layer, f"skipped: {reason}"))
                continue
            first = uses[0]
            weight = program.params[param]  # read before the rewrite drops it
            matrix = apply_view(weight, first.chain)
            if first.batch_shared:
                matrix = matrix[0]
            k, n = matrix.shape
            fixed = options.rank is not None or options.reduction is not None  # rank from k, n alone
            svd = truncated_svd(matrix, rank=choose_rank(np.ones(min(k, n)), options, k, n) if fixed else None, energy=options.energy)
            r = len(svd.s)
            if r * (k + n) >= k * n and not options.force:
                result.changes.append(
                    LayerChange(layer, f"skipped: rank {r} would not reduce FLOPs ({r}·({k}+{n}) ≥ {k}·{n})", {"rank": r})
                )
                continue
            a, b = factor((svd.u, svd.s, svd.vt), r, matrix.dtype)
            a_val = program.constant(f"{param}.lowrank_in", a, origin=layer)
            b_val = program.constant(f"{param}.lowrank_out", b, origin=layer)
            for w in uses:
                x, init = w.op.operands[0], w.op.operands[2]
                with program.at(w.op) as build:
                    t = build.linear(x, a_val, build.zeros(_rows(x) + (r,), like=x))
                    y = build.linear(t, b_val, init)
                program.replace(w.op, y)
            effective = a @ b  # in the factors' dtype: float64 here doubled the memory of a big layer
            if first.batch_shared:
                effective = np.broadcast_to(effective, (first.weight_shape[0], k, n))
            result.reference_weights[layer] = unapply_view(
                effective.astype(np.float32), first.chain, weight.shape
            )
            kept = svd.energy_kept(r)
            result.changes.append(
                LayerChange(
                    layer,
                    f"factorized rank {r}",
                    {"rank": r, "in": k, "out": n, "energy_kept": kept, "ops": len(uses)},
                )
            )
        return result


def _rows(x) -> tuple[int, ...]:
    return shape_of(x)[:-1]


@hookimpl
def optc_register_methods(register):
    register(LowRank())
