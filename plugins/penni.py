"""``--plugins penni``: kernel decomposition of convolutions (PENNI, ESCALATE).

PENNI ("Pruned Kernel Sharing for Efficient CNN Inference") writes every KH×KW
kernel of a convolution as a combination of a few basis kernels shared by the
layer, W[o, i] = Σ_b C[o, i, b]·B[b], and prunes the coefficients C. Here the
bases are the top ``nb`` right singular vectors of the layer's kernels stacked
as an (O·I)×(KH·KW) matrix; the coefficients are the projections onto them or,
with ``--calib``, the least-squares fit of the layer's output on calibration
inputs (with the bases fixed the effective weight is C·Tᵀ, T = I ⊗ Bᵀ, so
C = W·G·T·(Tᵀ·G·T)⁻¹ for G = E[x·xᵀ] over im2col rows). ``coef_keep`` keeps
the largest coefficients and refits the kept ones the same way.

The rewrite computes in ESCALATE's basis-first order:

    maps = depthwise_conv(x, B)    every input channel convolved with each basis (IC·nb maps;
                                   stride, dilation as the original; x is already padded)
    y    = init + conv1x1(maps, C) the coefficients as a (grouped) 1×1 convolution

per output pixel IC·nb·KH·KW + OC·(IC/G)·nb MACs instead of OC·(IC/G)·KH·KW.
Basis maps no kept coefficient reads are not computed (PENNI's channel
removal; dense layers only). The coefficients are published as a
``KernelBasis`` structure, so ``admm`` can re-solve and quantize them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from torch_mlir import ir

from optc.api import LayerMethod, MethodContext, Plan, SelectionOptions, Skip, SkipReason, option
from optc.builder import Builder
from optc.errors import OptionError
from optc.hookspecs import hookimpl
from optc.plugins.lowrank import energy_rank
from optc.program import Layer, LayerRewriter, WeightedOp, shape_of
from optc.storage import Layout
from optc.structures import KernelBasis, unstructured_mask


@dataclass
class PenniOptions(SelectionOptions):
    OVERRIDABLE = ("bases", "energy", "coef_keep")

    bases: Optional[int] = option(None, "basis kernels per layer, 1 … KH·KW (overrides energy); a layer with fewer kernel elements is skipped (an error when named)")
    energy: float = option(0.9, "keep the fewest bases whose singular values hold this fraction of the kernels' squared norm, in (0, 1]")
    coef_keep: float = option(1.0, "fraction of the coefficients kept (largest magnitude, then refit), in (0, 1]")
    damp: float = option(0.001, "with --calib: added to diag(G), relative to its mean, in the coefficient least squares")
    force: bool = option(False, "decompose even where it would not reduce MACs (to check the rewrite is exact)")

    def validate(self) -> None:
        if self.bases is not None and self.bases < 1:
            raise ValueError(f"bases={self.bases}: must be an integer >= 1 (at most the kernel's KH·KW)")
        if not 0.0 < self.energy <= 1.0:
            raise ValueError(f"energy={self.energy}: must be in (0, 1]")
        if not 0.0 < self.coef_keep <= 1.0:
            raise ValueError(f"coef_keep={self.coef_keep}: must be in (0, 1]")
        if self.damp < 0:
            raise ValueError(f"damp={self.damp}: must be >= 0")
        super().validate()


def kernel_bases(matrix: np.ndarray, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """(singular values, bases as rows) of a layer's kernels: ``matrix`` is
    out×(in·kernel), each row ``in`` kernels of ``kernel`` elements."""
    kernels = matrix.astype(np.float64).reshape(-1, kernel)
    _, s, vt = np.linalg.svd(kernels, full_matrices=False)
    return s, vt


def coefficients(matrix: np.ndarray, bases: np.ndarray, keep: np.ndarray | None, gram: np.ndarray | None, damp: float) -> np.ndarray:
    """C (out × in·nb) for fixed ``bases`` minimizing ‖(W − C·Tᵀ)·X‖² (X with
    second moment ``gram``; the identity without one), zero outside ``keep``."""
    out, cols = matrix.shape
    t = np.kron(np.eye(cols // bases.shape[1]), bases.T)  # (in·kernel) × (in·nb)
    w = matrix.astype(np.float64)
    if gram is None and keep is None:
        return w @ t  # orthonormal bases: the projection is the least-squares fit
    g = gram if gram is not None else np.eye(cols)
    gt = t.T @ g @ t  # the second moment of the basis maps
    if gram is not None:
        gt += damp * (float(np.mean(np.diag(gt))) or 1.0) * np.eye(len(gt))
    target = w @ g @ t
    if keep is None:
        return np.linalg.solve(gt, target.T).T
    coef = np.zeros((out, t.shape[1]))
    supports: dict[bytes, list[int]] = {}
    for row, kept in enumerate(keep):  # rows with one support share a solve
        supports.setdefault(np.packbits(kept).tobytes(), []).append(row)
    for rows in supports.values():
        on = np.flatnonzero(keep[rows[0]])
        if len(on):
            coef[np.ix_(rows, on)] = np.linalg.solve(gt[np.ix_(on, on)], target[np.ix_(rows, on)].T).T
    return coef


def output_error(matrix: np.ndarray, effective: np.ndarray, gram: np.ndarray) -> float:
    """‖(W − Ŵ)·X‖² / ‖W·X‖² for inputs X with second moment ``gram``."""
    d = matrix.astype(np.float64) - effective.astype(np.float64)
    w = matrix.astype(np.float64)
    base = float(np.einsum("ik,kl,il->", w, gram, w))
    return float(np.einsum("ik,kl,il->", d, gram, d)) / base if base > 0 else 0.0


def _kernel_size(w: WeightedOp) -> int:
    return int(np.prod(w.weight_shape[-2:]))


class Penni(LayerMethod):
    name = "penni"
    summary = "kernel decomposition (PENNI/ESCALATE): each conv becomes a depthwise conv with a few shared basis kernels and a 1×1 coefficient conv"
    Options = PenniOptions

    def plan(self, layer: Layer, options: PenniOptions, ctx: MethodContext) -> Plan | Skip:
        w = layer.uses[0]
        kernel = _kernel_size(w) if w.conv else 1
        if not w.conv or kernel == 1:
            what = layer.kind if not w.conv else "a 1×1 convolution"
            if options.names(layer.name):
                raise OptionError(f"penni: layer {layer.name} is {what}; penni decomposes KH×KW convolutions (conv2d, grouped, depthwise) with KH·KW > 1")
            return Skip(SkipReason.UNSUPPORTED, f"{what} (penni decomposes KH×KW convolution kernels)")
        matrix = layer.matrix()
        out, cols = matrix.shape
        s, vt = kernel_bases(matrix, kernel)
        full = len(s)
        if options.bases is not None and options.bases > full:
            return Skip(SkipReason.DOES_NOT_FIT, f"bases={options.bases} is above the full rank {full} of layer {layer.name}'s "
                        f"{w.weight_shape[-2]}×{w.weight_shape[-1]} kernels: use 1…{full}, or penni.skip={layer.name}")
        nb = options.bases if options.bases is not None else energy_rank(s, options.energy)
        bases = vt[:nb]
        groups = layer.groups
        gram = ctx.calibration.gram(layer.name) if ctx.calibration is not None and groups == 1 else None
        coef = coefficients(matrix, bases, None, gram, options.damp)
        keep = np.ones(coef.shape, dtype=bool)
        if options.coef_keep < 1.0:
            keep = unstructured_mask(coef, options.coef_keep)
            coef = coefficients(matrix, bases, keep, gram, options.damp)
        structure = KernelBasis(bases.astype(np.float32), keep, groups)
        pixels = int(np.prod(w.output_shape)) // out  # output pixels × batch, per use
        macs = structure.macs(pixels) * len(layer.uses)
        if macs >= layer.macs and not options.force:
            return Skip(SkipReason.NOT_PROFITABLE, f"{nb} bases would not reduce MACs ({macs} ≥ {layer.macs})", {"bases": nb})
        effective = coef @ structure.input_map().T
        kept = float(np.sum(s[:nb] ** 2) / np.sum(s**2)) if np.sum(s**2) > 0 else 1.0
        details = {"bases": nb, "kernel": kernel, "groups": groups, "maps": int(structure.maps().size), "coef_density": float(keep.mean()),
                   "energy_kept": kept, "calibrated": gram is not None, "macs_ratio": layer.macs / macs}
        if gram is not None:
            details["output_error"] = output_error(matrix, effective, gram)
        action = f"decomposed into {nb} basis kernels" + (f", {keep.mean():.0%} of coefficients kept" if options.coef_keep < 1.0 else "")
        return Plan(action, details, structure=structure, coef=coef.astype(np.float32), effective=effective)

    def rewrite(self, layer: Layer, plan: Plan, rw: LayerRewriter) -> np.ndarray:
        s: KernelBasis = plan.structure
        maps = s.maps()
        dense = maps.shape[1] == s.shape[1]
        layout = Layout(lambda c: _coefficient_weight(c, maps, s.groups))
        coef = rw.constant("penni_coef", layout.to_stored(plan.coef))
        kernel_shape = layer.uses[0].weight_shape[-2:]
        bases = s.bases.reshape(len(s.bases), *kernel_shape)
        if dense:  # nb kernels stored once, broadcast to every input channel where used
            basis_weight = rw.constant("penni_bases", np.ascontiguousarray(bases))
            channels = None
        else:  # only the used maps: the input channel and basis of each
            channel, basis = np.divmod(maps[0], len(s.bases))
            basis_weight = rw.constant("penni_bases", np.ascontiguousarray(bases[basis]))
            channels = channel.astype(np.int32)

        def basis_first(w: WeightedOp, build: Builder) -> ir.Value:
            op = w.op
            x, init = op.operands[0], op.operands[2]
            if w.kind == "grouped_conv2d":  # the op reads N×G×C/G×H×W: compute on NCHW, hand back its shape
                flat = [[0], [1, 2], [3], [4]]
                y = basis_first_nchw(op, build.collapse(x, flat), build.collapse(init, flat), build)
                return build.expand(y, flat, shape_of(op.results[0]))
            return basis_first_nchw(op, x, init, build)

        def basis_first_nchw(op: ir.Operation, x: ir.Value, init: ir.Value, build: Builder) -> ir.Value:
            strides = [int(v) for v in np.array(op.attributes["strides"])]
            dilations = [int(v) for v in np.array(op.attributes["dilations"])]
            if channels is None:
                every_channel = build.generic(
                    [basis_weight], build.empty((shape_of(x)[1], *bases.shape), basis_weight),
                    ["(c, b, h, w) -> (b, h, w)", "(c, b, h, w) -> (c, b, h, w)"], lambda v, _out: v,
                )
                basis_maps = build.depthwise_conv2d_multiplier(x, every_channel, strides=strides, dilations=dilations)
            else:
                basis_maps = build.depthwise_conv2d(build.gather(x, channels, dim=1), basis_weight, strides=strides, dilations=dilations)
            if s.groups == 1:
                return build.conv2d(basis_maps, coef, init)
            return build.grouped_conv2d(basis_maps, coef, s.groups, init)

        rw.each_use(basis_first)
        rw.publish(s, plan.coef, rw.program.trace_param(coef)[0], layout)
        return layer.from_matrix(plan.effective.astype(np.float32))


def _coefficient_weight(coef: np.ndarray, maps: np.ndarray, groups: int) -> np.ndarray:
    """The 1×1 conv weight (out × maps per group × 1 × 1) holding the used columns of C."""
    out = coef.shape[0]
    per_group = out // groups
    rows = [coef[g * per_group:(g + 1) * per_group][:, maps[g]] for g in range(groups)]
    return np.ascontiguousarray(np.concatenate(rows)[:, :, None, None])


@hookimpl
def optc_register_methods(register):
    register(Penni())
