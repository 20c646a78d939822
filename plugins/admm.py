"""``--plugins admm``: weights solved by ADMM on calibration data (ADMM-NN, Ren et al. 2019).

Per layer, with X the layer's calibration inputs and G = X·Xᵀ (from
``--calib``), find Ŵ in a constraint set S that reconstructs the layer's outputs:

    minimize ‖(W − Ŵ)·X‖² = tr((W − Ŵ)·G·(W − Ŵ)ᵀ)   subject to Ŵ ∈ S

ADMM splits the smooth fit from the combinatorial constraint:
    Ŵ ← (W·G + ρ(Z − U))·(G + ρI)⁻¹         exact least squares (one eigendecomposition of G)
    Z ← Π_S(Ŵ + U)                           projection: keep the mask, round to levels
    U ← U + Ŵ − Z                            scaled dual update; ρ grows each iteration
S is the structure an earlier method chose (bcr's blocks, which the rewritten
program keeps), or admm's own: unstructured (the largest ``density`` fraction)
or N:M (n of every m consecutive inputs); intersected with per-output-channel
int8/int4 levels when ``quant`` is set. Without quantization the result is then
polished to the exact least-squares optimum on the final mask.

Quantized weights are stored as narrow integers plus a scale per output channel
and widened next to their use, so the artifact shrinks. Unstructured and N:M
masks are stored dense (zeros): IREE's CPU backend has no sparse kernels, so
they cut weights, not time — the report counts what is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from optc.api import LayerChange, Method, MethodContext, MethodResult, layer_selected, option
from optc.errors import OptionError
from optc.hookspecs import hookimpl
from optc.program import Program, WeightedOp
from optc.quant import Quantized, narrow_weight, quantize

BITS = {"int8": 8, "int4": 4}


@dataclass
class AdmmOptions:
    prune: Literal["auto", "structure", "unstructured", "nm", "none"] = option(
        "auto", "constraint: an earlier method's structure (structure), its own unstructured or N:M mask, or none (quantize only); auto = structure when an earlier method left one, else unstructured"
    )
    density: float = option(0.25, "unstructured: fraction of each layer's weights kept, in (0, 1]")
    n: int = option(2, "N:M: keep n of every m consecutive inputs")
    m: int = option(4, "N:M: group size m along the inputs")
    quant: Literal["none", "int8", "int4"] = option("none", "also constrain weights to per-output-channel int8/int4 levels and store them narrow")
    iterations: int = option(40, "ADMM iterations per layer")
    rho: float = option(0.05, "initial penalty ρ, relative to the mean of diag(G); multiplied by 1.2 each iteration")
    damp: float = option(0.01, "added to diag(G), relative to its mean, so that rank-deficient inputs still solve")
    sequential: bool = option(True, "solve layers in program order, each on the inputs the already-solved layers produce (one calibration run per layer)")
    passes: int = option(1, "solve every layer this many times, each pass on the inputs of the previous pass's weights (helps recurrent layers)")
    layers: tuple[str, ...] = option((), "only these layers (comma-separated fnmatch patterns on parameter names); empty = all")
    skip: tuple[str, ...] = option((), "never these layers (comma-separated fnmatch patterns)")

    def validate(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density={self.density}: must be in (0, 1]")
        if not 0 < self.n <= self.m:
            raise ValueError(f"n={self.n}, m={self.m}: need 0 < n <= m")
        if self.iterations < 1:
            raise ValueError(f"iterations={self.iterations}: must be >= 1")
        if self.passes < 1:
            raise ValueError(f"passes={self.passes}: must be >= 1")
        if not self.rho > 0 or self.damp < 0:
            raise ValueError("rho must be > 0 and damp >= 0")


# ----------------------------------------------------------------------------- solver


@dataclass
class LayerData:
    """Second moments of a layer's inputs: x as in the original model, x̃ as the
    compressed model feeds it (x̃ = x unless solving sequentially)."""

    goo: np.ndarray  # E[x·xᵀ]
    gcc: np.ndarray  # E[x̃·x̃ᵀ]
    goc: np.ndarray  # E[x·x̃ᵀ]

    @classmethod
    def same(cls, gram: np.ndarray) -> "LayerData":
        return cls(gram, gram, gram)


def objective(w: np.ndarray, z: np.ndarray, d: LayerData) -> float:
    """‖W·X − Z·X̃‖² relative to ‖W·X‖²."""
    w, z = w.astype(np.float64), z.astype(np.float64)
    base = float(np.einsum("ik,kl,il->", w, d.goo, w))
    err = base - 2 * float(np.einsum("ik,kl,il->", w, d.goc, z)) + float(np.einsum("ik,kl,il->", z, d.gcc, z))
    return max(err, 0.0) / base if base > 0 else 0.0


def _damped(g: np.ndarray, damp: float) -> np.ndarray:
    return g + damp * (float(np.mean(np.diag(g))) or 1.0) * np.eye(len(g))


def admm(
    w: np.ndarray, d: LayerData, project: Callable[[np.ndarray], np.ndarray], iterations: int, rho: float, damp: float
) -> tuple[np.ndarray, list[float]]:
    """The ADMM iterates for min ‖W·X − Ŵ·X̃‖² s.t. Ŵ ∈ S (S given by its projection).

    Returns the feasible iterate with the lowest objective, and the objective of
    every feasible iterate Z_0 = Π(W), Z_1, … (the history the tests check)."""
    w = w.astype(np.float64)
    g = _damped(d.gcc, damp)
    evals, q = np.linalg.eigh(g)
    target = w @ d.goc  # the Ŵ-step solves Ŵ·(G̃ + ρI) = W·E[x·x̃ᵀ] + ρ(Z − U)
    z = project(w)
    u = np.zeros_like(w)
    history = [objective(w, z, d)]
    best, best_obj = z, history[0]
    r = rho * (float(np.mean(np.diag(d.gcc))) or 1.0)
    for _ in range(iterations):
        w_hat = (((target + r * (z - u)) @ q) / (evals + r)) @ q.T
        z = project(w_hat + u)
        u += w_hat - z
        history.append(objective(w, z, d))
        if history[-1] < best_obj:
            best, best_obj = z, history[-1]
        u /= 1.2  # scaled dual: U = Λ/ρ, and ρ grows by 1.2
        r *= 1.2
    return best, history


def masked_least_squares(w: np.ndarray, d: LayerData, mask: np.ndarray, damp: float) -> np.ndarray:
    """argmin ‖W·X − Ŵ·X̃‖² with Ŵ zero outside ``mask``: per row,
    Ŵ[S] = (W·E[x·x̃ᵀ])[S]·G̃[S,S]⁻¹. Rows that share a support (a bcr block) share one solve."""
    g = _damped(d.gcc, damp)
    target = w.astype(np.float64) @ d.goc
    out = np.zeros(w.shape, dtype=np.float64)
    groups: dict[bytes, list[int]] = {}
    for i, row in enumerate(mask):
        groups.setdefault(np.packbits(row).tobytes(), []).append(i)
    for rows in groups.values():
        support = np.flatnonzero(mask[rows[0]])
        if len(support):
            gs = g[np.ix_(support, support)]
            out[np.ix_(rows, support)] = np.linalg.solve(gs, target[np.ix_(rows, support)].T).T
    return out


def unstructured_mask(v: np.ndarray, density: float) -> np.ndarray:
    keep = max(1, round(density * v.size))
    flat = np.abs(v).ravel()
    mask = np.zeros(v.size, dtype=bool)
    mask[np.argpartition(-flat, keep - 1)[:keep]] = True
    return mask.reshape(v.shape)


def nm_mask(v: np.ndarray, n: int, m: int) -> np.ndarray:
    rows, k = v.shape
    groups = np.abs(v).reshape(rows, k // m, m)
    order = np.argsort(-groups, axis=2, kind="stable")[:, :, :n]
    mask = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(mask, order, True, axis=2)
    return mask.reshape(rows, k)


def projection(
    mask_of: Callable[[np.ndarray], np.ndarray], bits: int | None
) -> Callable[[np.ndarray], np.ndarray]:
    """Π_S for S = {masked} ∩ {per-row levels}: mask, then round each row to its levels."""

    def project(v: np.ndarray) -> np.ndarray:
        z = np.where(mask_of(v), v, 0.0)
        return quantize(z, bits).dequantized().astype(np.float64) if bits else z

    return project


# ----------------------------------------------------------------------------- method


class Admm(Method):
    name = "admm"
    summary = "ADMM weight solving on calibration data (ADMM-NN): reconstruct each layer's outputs inside bcr's blocks, an unstructured or N:M mask, and int8/int4 levels"
    Options = AdmmOptions
    needs_calibration = True

    def apply(self, program: Program, options: AdmmOptions, ctx: MethodContext) -> MethodResult:
        assert ctx.calibration is not None  # the driver checks needs_calibration
        mode = options.prune
        if mode == "auto":
            mode = "structure" if program.structures else "unstructured"
        if mode == "structure" and not program.structures:
            raise OptionError("admm.prune=structure: no earlier method left a structure (put bcr before admm: --plugins bcr,admm)")
        bits = BITS.get(options.quant)
        result = MethodResult(self.name)
        layers = self._layers(program, options, mode, result)
        solved: dict[str, np.ndarray] = {}  # layer -> its solved weights, parameter layout
        for step in range(options.passes):
            for layer, (matrix, store, to_param, fixed) in layers.items():
                if options.sequential and solved:  # inputs as the layers solved so far produce them
                    data = LayerData(ctx.calibration.gram(layer), *ctx.calibration.cross(layer, solved))
                else:
                    data = LayerData.same(ctx.calibration.gram(layer))
                dense, quantized, details = self._solve(layer, matrix, data, fixed, mode, bits, options)
                solved[layer] = to_param(dense)
                if step == options.passes - 1:
                    details["storage"] = store(dense, quantized)
                    result.reference_weights[layer] = solved[layer]
                    result.changes.append(
                        LayerChange(layer, f"solved by ADMM ({_describe(mode, fixed is not None, options)}{', ' + options.quant if bits else ''})", details)
                    )
        return result

    def _solve(
        self, layer: str, matrix: np.ndarray, data: LayerData, fixed: np.ndarray | None, mode: str, bits: int | None, options: AdmmOptions
    ) -> tuple[np.ndarray, Quantized | None, dict]:
        """One layer's solution: the float32 out×in weights the program computes
        with, their quantization (when ``bits``), and what to report."""
        if fixed is not None:
            mask_of = lambda v: fixed  # noqa: E731
        elif mode == "unstructured":
            mask_of = lambda v: unstructured_mask(v, options.density)  # noqa: E731
        elif mode == "nm":
            if matrix.shape[1] % options.m:
                raise OptionError(f"admm: N:M groups of m={options.m} do not fit layer {layer} ({matrix.shape[1]} inputs)")
            mask_of = lambda v: nm_mask(v, options.n, options.m)  # noqa: E731
        else:
            mask_of = lambda v: np.ones(v.shape, dtype=bool)  # noqa: E731
        z, history = admm(matrix, data, projection(mask_of, bits), options.iterations, options.rho, options.damp)
        mask = fixed if fixed is not None else z != 0
        quantized = None
        if bits is None:
            dense = masked_least_squares(matrix, data, mask, options.damp).astype(np.float32)
        else:
            quantized = quantize(z.astype(np.float32), bits)
            dense = quantized.dequantized()
        return dense, quantized, {
            "density": float(mask.mean()),
            "objective_first": history[0],
            "objective_admm": min(history),
            "objective_final": objective(matrix, dense, data),
            "iterations": options.iterations,
            "sequential": options.sequential,
        }

    def _layers(self, program: Program, options: AdmmOptions, mode: str, result: MethodResult) -> dict:
        """layer -> (dense out×in matrix, store(matrix, quantized), to_param(matrix), fixed mask or None)."""
        chosen: dict = {}
        selected = lambda layer: layer_selected(layer, options.layers, options.skip)  # noqa: E731
        for layer, s in program.structures.items():
            if not selected(layer):
                continue
            if mode != "structure":
                raise OptionError(f"admm.prune={mode}: layer {layer} already has {s.method}'s structure; use admm.prune=structure (or auto) after {s.method}")
            chosen[layer] = (s.matrix, lambda m, q, s=s: s.store(program, m, q), s.to_param, s.mask())
        for param, uses in program.uses_by_param(selected).items():
            layer, first = uses[0].layer, uses[0]
            if layer in chosen or layer in program.structures:
                continue
            if mode == "structure" and options.quant == "none":
                continue  # nothing to solve: no structure and no levels
            reason = program.matrix_problem(uses)
            if reason:
                result.changes.append(LayerChange(layer, f"skipped: {reason}"))
                continue
            weight = program.params[param]
            chosen[layer] = (
                first.matrix(weight),
                lambda m, q, first=first, param=param, layer=layer: _store_dense(program, first, param, layer, m, q),
                lambda m, first=first, shape=weight.shape: first.from_matrix(m, shape),
                None,
            )
        return chosen


def _describe(mode: str, structured: bool, options: AdmmOptions) -> str:
    if structured:
        return "inside the earlier method's structure"
    return {"unstructured": f"unstructured, density {options.density:g}", "nm": f"{options.n}:{options.m} sparse"}.get(mode, "not pruned")


def _store_dense(program: Program, first: WeightedOp, param: str, layer: str, matrix: np.ndarray, quantized: Quantized | None) -> str:
    """Replace the layer's parameter by the solved weights (narrow when quantized); returns how they are stored."""
    shape = program.params[param].shape
    if quantized is None:
        program.replace(program.constant_op(param), program.constant(f"{layer}.admm", first.from_matrix(matrix, shape), origin=layer))
        return "float32"
    rows = first.from_matrix(np.broadcast_to(np.arange(matrix.shape[0], dtype=np.float32)[:, None], matrix.shape), shape)
    varying = [d for d in range(rows.ndim) if rows.shape[d] > 1 and not np.all(rows == rows.take([0], axis=d))]
    if len(varying) != 1:
        raise ValueError(f"layer {layer}: no single parameter dim holds its output channels")
    levels = first.from_matrix(quantized.levels.astype(np.float32), shape).astype(np.int8)
    return narrow_weight(program, param, f"{layer}.admm", levels, quantized.scales, varying, quantized.bits, layer)[1]


@hookimpl
def optc_register_methods(register):
    register(Admm())
