"""``--plugins penni``: kernel decomposition of convolutions (PENNI, ESCALATE).

PENNI ("Pruned Kernel Sharing for Efficient CNN Inference") writes every KH×KW
kernel of a convolution as a combination of a few basis kernels shared by the
layer, W[o, i] = Σ_b C[o, i, b]·B[b], and prunes the coefficients C. Here the
bases are the top ``nb`` right singular vectors of the layer's kernels stacked
as an (O·I)×(KH·KW) matrix; the coefficients are the projections onto them or,
with ``--calib``, the least-squares fit of the layer's output on calibration
inputs (with the bases fixed the effective weight is C·Tᵀ, T = I ⊗ Bᵀ, so
C = W·G·T·(Tᵀ·G·T)⁻¹ for G = E[x·xᵀ] over im2col rows). With ``sequential``
(the default) layers are fit in program order and each on the inputs x̃ the
already-decomposed layers produce: C = W·E[x·x̃ᵀ]·T·(Tᵀ·E[x̃·x̃ᵀ]·T)⁻¹, so
a layer corrects the error earlier layers pass on (admm's sequential mode,
``optc.calibration.solve_in_order``). ``coef_keep`` keeps the largest
coefficients and refits the kept ones the same way.

The rewrite computes in ESCALATE's basis-first order:

    maps = depthwise_conv(x, B)    every input channel convolved with each basis (IC·nb maps;
                                   stride, dilation as the original; x is already padded)
    y    = init + conv1x1(maps, C) the coefficients as a (grouped) 1×1 convolution

The basis maps are computed (``form``) as one regular conv with the nb bases as
filters over x viewed as N·IC one-channel images — (N·IC)×nb maps, which are
already the IC·nb channels in order — or as x broadcast to IC·nb channels and a
depthwise conv. IREE compiles the first far better: on the ResNet-18-shaped
model with 4 bases, 1.52× faster than dense against 0.71× (one thread,
interleaved, busy machine; ``benchmarks/compare_artifacts.py``). The cpu
target computes it as taps on the image, channels-last, in the layout the
coefficient conv reads (``single_channel_convs_as_taps``): 1.77× faster than
dense at 2.18× fewer FLOPs (``optc bench``, 2 threads, 2026-12-05).

Cost per output pixel: IC·nb·KH·KW + OC·(IC/G)·nb MACs instead of OC·(IC/G)·KH·KW.
Basis maps no kept coefficient reads are not computed (PENNI's channel
removal; dense layers only). The coefficients are published as a
``KernelBasis`` structure, so ``admm`` can re-solve and quantize them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
from torch_mlir import ir

from optc.api import LayerMethod, MethodContext, Plan, SelectionOptions, Skip, SkipReason, option
from optc.builder import Builder
from optc.calibration import LayerData, damping, objective, plus_diagonal, solve_in_order
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
    form: Literal["channels_as_batch", "broadcast"] = option("channels_as_batch", "how the basis maps are computed (dense layers): one regular conv with the nb bases as filters over the input viewed as N·IC one-channel images (IREE compiles it ~2x faster on the ResNet-18-shaped model), or a depthwise conv over the input broadcast to IC·nb channels")
    sequential: bool = option(True, "with --calib: fit layers in program order, each on the inputs the already-decomposed layers produce (one calibration run per layer)")

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


def coefficients(matrix: np.ndarray, bases: np.ndarray, keep: np.ndarray | None, data: LayerData | None, damp: float) -> np.ndarray:
    """C (out × in·nb) for fixed ``bases`` minimizing ‖W·X − C·Tᵀ·X̃‖² (the
    moments of X and X̃ in ``data``; the identity without it), zero outside ``keep``."""
    out, cols = matrix.shape
    t = np.kron(np.eye(cols // bases.shape[1]), bases.T)  # (in·kernel) × (in·nb)
    w = matrix.astype(np.float64)
    if data is None and keep is None:
        return w @ t  # orthonormal bases: the projection is the least-squares fit
    d = data if data is not None else LayerData.same(np.eye(cols), w)
    gt = t.T @ d.gcc.astype(np.float64) @ t  # the second moment of the basis maps
    if data is not None:
        gt = plus_diagonal(gt, damping(gt, damp))
    target = d.target @ t
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


def _kernel_size(w: WeightedOp) -> int:
    return int(np.prod(w.weight_shape[-2:]))


class Penni(LayerMethod):
    name = "penni"
    summary = "kernel decomposition (PENNI/ESCALATE): each conv becomes a depthwise conv with a few shared basis kernels and a 1×1 coefficient conv"
    Options = PenniOptions

    def plan_layers(self, layers: list[Layer], options: PenniOptions, ctx: MethodContext) -> list[Plan | Skip]:
        """Each layer planned in program order; with --calib (and ``sequential``)
        each fit on the inputs the layers decomposed before it produce."""
        kernels = [layer for layer in layers if layer.uses[0].conv and _kernel_size(layer.uses[0]) > 1]
        names = {layer.name for layer in kernels}
        plans = {layer.name: self._plan(layer, options.for_layer(layer.name), None) for layer in layers if layer.name not in names}  # skips
        plans.update(solve_in_order(self.name, kernels, lambda layer, data: self._plan(layer, options.for_layer(layer.name), data), ctx, options.sequential))
        return [plans[layer.name] for layer in layers]

    def _plan(self, layer: Layer, options: PenniOptions, data: LayerData | None) -> Plan | Skip:
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
        keep = np.ones((out, (cols // kernel) * nb), dtype=bool)
        if options.coef_keep < 1.0:
            keep = unstructured_mask(coefficients(matrix, bases, None, data, options.damp), options.coef_keep)
        structure = KernelBasis(bases.astype(np.float32), keep, groups)
        pixels = int(np.prod(w.output_shape)) // out  # output pixels × batch, per use
        macs = structure.macs(pixels) * len(layer.uses)
        if macs >= layer.macs and not options.force:
            return Skip(SkipReason.NOT_PROFITABLE, f"{nb} bases would not reduce MACs ({macs} ≥ {layer.macs})", {"bases": nb})
        coef = coefficients(matrix, bases, keep if options.coef_keep < 1.0 else None, data, options.damp)
        dense = coef @ structure.input_map().T
        kept = float(np.sum(s[:nb] ** 2) / np.sum(s**2)) if np.sum(s**2) > 0 else 1.0
        details = {"bases": nb, "kernel": kernel, "groups": groups, "maps": int(structure.maps().size), "coef_density": float(keep.mean()),
                   "energy_kept": kept, "calibrated": data is not None, "macs_ratio": layer.macs / macs}
        if data is not None:
            details["output_error"] = objective(dense, data)
            details["sequential"] = data.sequential
        action = f"decomposed into {nb} basis kernels" + (f", {keep.mean():.0%} of coefficients kept" if options.coef_keep < 1.0 else "")
        return Plan(action, details, structure=structure, coef=coef.astype(np.float32), dense=dense, form=options.form)

    def rewrite(self, layer: Layer, plan: Plan, rw: LayerRewriter) -> np.ndarray:
        s: KernelBasis = plan.structure
        maps = s.maps()
        dense = maps.shape[1] == s.shape[1]
        layout = Layout(lambda c: _coefficient_weight(c, maps, s.groups))
        coef = rw.constant("penni_coef", layout.to_stored(plan.coef))
        kernel_shape = layer.uses[0].weight_shape[-2:]
        bases = s.bases.reshape(len(s.bases), *kernel_shape)
        options_form = plan.form
        if dense and options_form == "channels_as_batch":  # nb filters of one input channel
            basis_filters = rw.constant("penni_bases", np.ascontiguousarray(bases[:, None]))
            channels = None
        elif dense:  # nb kernels stored once, broadcast to every input channel where used
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
            if channels is None and options_form == "channels_as_batch":
                # every input channel an image of its own: one regular conv with the nb bases as filters
                n, c, h, wd = shape_of(x)
                single = build.expand(build.collapse(x, [[0, 1], [2], [3]]), [[0, 1], [2], [3]], (n * c, 1, h, wd))
                maps = build.conv2d(single, basis_filters, strides=strides, dilations=dilations)  # (N·IC) × nb × OH × OW
                _, nb, oh, ow = shape_of(maps)
                basis_maps = build.expand(build.collapse(maps, [[0, 1], [2], [3]]), [[0, 1], [2], [3]], (n, c * nb, oh, ow))
            elif channels is None:
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
        return layer.from_matrix(plan.dense.astype(np.float32))


def _coefficient_weight(coef: np.ndarray, maps: np.ndarray, groups: int) -> np.ndarray:
    """The 1×1 conv weight (out × maps per group × 1 × 1) holding the used columns of C."""
    out = coef.shape[0]
    per_group = out // groups
    rows = [coef[g * per_group:(g + 1) * per_group][:, maps[g]] for g in range(groups)]
    return np.ascontiguousarray(np.concatenate(rows)[:, :, None, None])


@hookimpl
def optc_register_methods(register):
    register(Penni())
