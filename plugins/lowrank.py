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
from typing import Literal, Optional

import numpy as np
from torch_mlir import ir

from optc.api import LayerMethod, MethodContext, Plan, SelectionOptions, Skip, SkipReason, option
from optc.hookspecs import hookimpl
from optc.builder import Builder
from optc.errors import OptionError
from optc.program import Layer, LayerRewriter, WeightedOp
from optc.svd import truncated_svd


@dataclass
class LowRankOptions(SelectionOptions):
    OVERRIDABLE = ("rank", "reduction", "energy")

    rank: Optional[int] = option(None, "rank r for every factored layer (overrides energy; capped at min(in, out))")
    reduction: Optional[float] = option(None, "choose each layer's rank so its FLOPs shrink by this factor (r = in·out / (reduction·(in+out))); overrides rank and energy")
    energy: float = option(0.9, "keep the smallest rank whose singular values hold this fraction of the squared norm, in (0, 1]")
    force: bool = option(False, "factor even where it would not reduce FLOPs (to check the rewrite is exact)")
    conv: Literal["channel", "spatial", "none"] = option(
        "channel", "convolutions: channel (KH×KW conv to r channels, then 1×1 conv), spatial (KH×1 conv to r channels, then 1×KW conv; Jaderberg et al.) or none (left as they are)"
    )

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
            return plan_conv(layer, options)
        matrix = layer.matrix().T  # in×out, as x·M reads it
        k, n = matrix.shape
        fixed = options.rank is not None or options.reduction is not None  # rank from k, n alone
        svd = truncated_svd(matrix, rank=choose_rank(np.ones(min(k, n)), options, k, n) if fixed else None, energy=options.energy)
        r = len(svd.s)
        if r * (k + n) >= k * n and not options.force:
            return Skip(SkipReason.NOT_PROFITABLE, f"rank {r} would not reduce FLOPs ({r}·({k}+{n}) ≥ {k}·{n})", {"rank": r})
        a, b = factor((svd.u, svd.s, svd.vt), r, matrix.dtype)
        details = {"rank": r, "in": k, "out": n, "energy_kept": svd.energy_kept(r), "ops": len(layer.uses)}
        return Plan(f"factorized rank {r}", details, a=a, b=b)

    def rewrite(self, layer: Layer, plan: Plan, rw: LayerRewriter) -> np.ndarray:
        if layer.uses[0].conv:
            return rewrite_conv(layer, plan, rw)
        rw.factor_uses(plan.a, plan.b, "lowrank")
        # out×in straight from the float32 factors: no float64 product, no transposed copy
        return layer.from_matrix((plan.b.T @ plan.a.T).astype(np.float32, copy=False))


# ----------------------------------------------------------------------------- convolutions


def conv_factor_shapes(w: WeightedOp, scheme: str) -> tuple[tuple[int, int], int]:
    """How a KH×KW conv's O×C×KH×KW weight is viewed for ``scheme``: (the shape
    of the matrix to factor, MACs per unit of rank of one use).
    channel: O×(C·KH·KW), a KH×KW conv to r channels then a 1×1 conv;
    spatial: (C·KH)×(O·KW), a KH×1 conv to r channels then a 1×KW conv."""
    n, c, hp, wp = w.input_shape
    o, _, kh, kw = w.weight_shape
    _, _, oh, ow = w.output_shape
    if scheme == "channel":
        return (c * kh * kw, o), n * oh * ow * (c * kh * kw + o)
    return (c * kh, o * kw), n * oh * (wp * c * kh + ow * o * kw)


def plan_conv(layer: Layer, options: LowRankOptions) -> Plan | Skip:
    """Channel or spatial factorization of a dense NCHW convolution."""
    w = layer.uses[0]
    scheme = options.conv
    if scheme == "none":
        return Skip(SkipReason.NOT_SELECTED, "lowrank.conv=none: convolutions are left as they are")
    kh, kw = w.weight_shape[-2:] if w.kind == "conv2d" else (1, 1)
    problem = None
    if w.kind != "conv2d":
        problem = f"{layer.kind} (lowrank factors dense convolutions; grouped and depthwise ones are not factored)"
    elif scheme == "spatial" and (kh == 1 or kw == 1):
        problem = f"a {kh}×{kw} convolution (spatial factorization needs KH, KW > 1; use lowrank.conv=channel)"
    if problem is not None:
        if options.names(layer.name):
            raise OptionError(f"lowrank: layer {layer.name} is {problem}")
        return Skip(SkipReason.UNSUPPORTED, problem)
    weight = layer.matrix().reshape(w.weight_shape).astype(np.float64)  # O×C×KH×KW as the op reads it
    o, c = weight.shape[:2]
    (k, n), per_use = conv_factor_shapes(w, scheme)
    per_rank = per_use * len(layer.uses)
    matrix = weight.reshape(o, -1).T if scheme == "channel" else weight.transpose(1, 2, 0, 3).reshape(c * kh, o * kw)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    full = len(s)
    if options.reduction is not None:
        r = max(1, min(full, int(layer.macs / (options.reduction * per_rank))))
    else:
        r = choose_rank(s, options, k, n)
    if r * per_rank >= layer.macs and not options.force:
        return Skip(SkipReason.NOT_PROFITABLE, f"rank {r} would not reduce FLOPs ({r}·{per_rank} ≥ {layer.macs} MACs)", {"rank": r})
    a, b = factor((u, s, vt), r, np.float32)  # matrix ≈ a·b: k×r, r×n
    if scheme == "channel":  # first: r×C×KH×KW, second: O×r (1×1)
        first, second = a.T.reshape(r, c, kh, kw), b.T.reshape(o, r, 1, 1)
    else:  # first: r×C×KH×1, second: O×r×1×KW
        first, second = a.T.reshape(r, c, kh, 1), b.reshape(r, o, 1, kw).transpose(1, 0, 2, 3)
    effective = (a.astype(np.float64) @ b.astype(np.float64))
    effective = effective.T if scheme == "channel" else effective.reshape(c, kh, o, kw).transpose(2, 0, 1, 3)
    kept = float(np.sum(s[:r] ** 2) / np.sum(s**2)) if np.sum(s**2) > 0 else 1.0
    details = {"rank": r, "scheme": scheme, "full_rank": full, "energy_kept": kept, "macs_ratio": layer.macs / (r * per_rank), "ops": len(layer.uses)}
    return Plan(f"factorized rank {r} ({scheme})", details, scheme=scheme,
                first=np.ascontiguousarray(first), second=np.ascontiguousarray(second), effective=effective.reshape(o, -1).astype(np.float32))


def rewrite_conv(layer: Layer, plan: Plan, rw: LayerRewriter) -> np.ndarray:
    """Each use of the conv becomes two convs (on the already padded image)."""
    first, second = rw.constant("lowrank_first", plan.first), rw.constant("lowrank_second", plan.second)

    def two_convs(w: WeightedOp, build: Builder) -> ir.Value:
        op = w.op
        x, init = op.operands[0], op.operands[2]
        (sh, sw), (dh, dw) = ([int(v) for v in np.array(op.attributes[a])] for a in ("strides", "dilations"))
        if plan.scheme == "channel":
            t = build.conv2d(x, first, strides=(sh, sw), dilations=(dh, dw))
            return build.conv2d(t, second, init)
        t = build.conv2d(x, first, strides=(sh, 1), dilations=(dh, 1))
        return build.conv2d(t, second, init, strides=(1, sw), dilations=(1, dw))

    rw.each_use(two_convs)
    return layer.from_matrix(plan.effective)


@hookimpl
def optc_register_methods(register):
    register(LowRank())
