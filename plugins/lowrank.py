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

from optc.api import LayerMethod, MethodContext, Plan, SelectionOptions, Skip, SkipReason, option
from optc.hookspecs import hookimpl
from optc.program import Layer, LayerRewriter, shape_of


@dataclass
class LowRankOptions(SelectionOptions):
    OVERRIDABLE = ("rank", "reduction", "energy")

    rank: Optional[int] = option(None, "rank r for every factored layer (overrides energy; capped at min(in, out))")
    reduction: Optional[float] = option(None, "choose each layer's rank so its FLOPs shrink by this factor (r = in·out / (reduction·(in+out))); overrides rank and energy")
    energy: float = option(0.9, "keep the smallest rank whose singular values hold this fraction of the squared norm, in (0, 1]")
    force: bool = option(False, "factor even where it would not reduce FLOPs (to check the rewrite is exact)")

    def validate(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank={self.rank}: must be an integer >= 1")
        if self.reduction is not None and not self.reduction > 1.0:
            raise ValueError(f"reduction={self.reduction}: must be > 1")
        if not 0.0 < self.energy <= 1.0:
            raise ValueError(f"energy={self.energy}: must be in (0, 1]")
        super().validate()


def choose_rank(singular_values: np.ndarray, options: LowRankOptions, k: int = 0, n: int = 0) -> int:
    """The rank for a K×N matrix with these singular values."""
    full = len(singular_values)
    if options.reduction is not None:
        return max(1, min(full, int(k * n / (options.reduction * (k + n)))))
    if options.rank is not None:
        return min(options.rank, full)
    return energy_rank(singular_values, options.energy)


def energy_rank(singular_values: np.ndarray, energy: float) -> int:
    """The smallest rank whose singular values hold ``energy`` of the squared norm."""
    held = np.cumsum(singular_values.astype(np.float64) ** 2)
    if held[-1] == 0:
        return 1
    return int(min(len(singular_values), np.searchsorted(held / held[-1], energy - 1e-12) + 1))


def factor(svd: tuple[np.ndarray, np.ndarray, np.ndarray], rank: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """K×N ≈ A (K×r) · B (r×N) from the matrix's (float64) SVD."""
    u, s, vt = svd
    return (u[:, :rank] * s[:rank]).astype(dtype), vt[:rank].astype(dtype)


class LowRank(LayerMethod):
    name = "lowrank"
    summary = "low-rank factorization (truncated SVD): each linear/LSTM matmul becomes two thinner matmuls"
    Options = LowRankOptions

    def plan(self, layer: Layer, options: LowRankOptions, ctx: MethodContext) -> Plan | Skip:
        if layer.uses[0].conv:
            return Skip(SkipReason.UNSUPPORTED, f"{layer.kind} (lowrank factors matmul weights; convolutions are not factored)")
        matrix = layer.matrix().T  # in×out, as x·M reads it
        k, n = matrix.shape
        svd = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)  # float64 for accuracy
        s = svd[1]
        r = choose_rank(s, options, k, n)
        if r * (k + n) >= k * n and not options.force:
            return Skip(SkipReason.NOT_PROFITABLE, f"rank {r} would not reduce FLOPs ({r}·({k}+{n}) ≥ {k}·{n})", {"rank": r})
        a, b = factor(svd, r, matrix.dtype)
        kept = float(np.sum(s[:r] ** 2) / np.sum(s**2)) if np.sum(s**2) > 0 else 1.0
        details = {"rank": r, "in": k, "out": n, "energy_kept": kept, "ops": len(layer.uses)}
        return Plan(f"factorized rank {r}", details, a=a, b=b)

    def rewrite(self, layer: Layer, plan: Plan, rw: LayerRewriter) -> np.ndarray:
        a_val, b_val = rw.constant("lowrank_in", plan.a), rw.constant("lowrank_out", plan.b)

        def two_matmuls(w, build):
            x, init = w.op.operands[0], w.op.operands[2]
            t = build.linear(x, a_val, build.zeros(shape_of(x)[:-1] + (plan.a.shape[1],), like=x))
            return build.linear(t, b_val, init)

        rw.each_use(two_matmuls)
        return layer.from_matrix((plan.a.astype(np.float64) @ plan.b.astype(np.float64)).T.astype(np.float32))


@hookimpl
def optc_register_methods(register):
    register(LowRank())
