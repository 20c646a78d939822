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

from optc.api import LayerMethod, MethodContext, Plan, SelectionOptions, Skip, SkipReason, option
from optc.calibration import LayerData, damping, objective, plus_diagonal, reconstruction_error, solve_in_order
from optc.errors import OptionError
from optc.hookspecs import hookimpl
from optc.program import Layer, LayerRewriter, Program
from optc.storage import quantize
from optc.structures import NM, Unstructured, nm_mask, unstructured_mask

BITS = {"int8": 8, "int4": 4}


@dataclass
class AdmmOptions(SelectionOptions):
    OVERRIDABLE = ("density", "iterations")

    prune: Literal["auto", "structure", "unstructured", "nm", "none"] = option(
        "auto", "constraint: an earlier method's structure (structure), its own unstructured or N:M mask, or none (quantize only); auto = structure when an earlier method left one, else unstructured"
    )
    density: float = option(0.25, "unstructured: fraction of each layer's weights kept, in (0, 1]")
    n: int = option(2, "N:M: keep n of every m consecutive inputs")
    m: int = option(4, "N:M: group size m along the inputs")
    quant: Literal["none", "int8", "int4"] = option("none", "also constrain weights to per-output-channel int8/int4 levels and store them narrow")
    iterations: int = option(40, "ADMM iterations per layer (none are needed, and none run, inside a fixed mask without quant: the masked least squares is the optimum)")
    rho: float = option(0.05, "initial penalty ρ, relative to the mean of diag(G); multiplied by 1.2 each iteration")
    damp: float = option(0.01, "added to diag(G), relative to its mean, so that rank-deficient inputs still solve")
    sequential: bool = option(True, "solve layers in program order, each on the inputs the already-solved layers produce (one calibration run per layer)")
    passes: int = option(1, "solve every layer this many times, each pass on the inputs of the previous pass's weights (helps recurrent layers)")

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
        super().validate()


# ----------------------------------------------------------------------------- solver


def admm(
    w: np.ndarray, d: LayerData, project: Callable[[np.ndarray], np.ndarray], iterations: int, rho: float, damp: float
) -> tuple[np.ndarray, list[float]]:
    """The ADMM iterates for min ‖W·X − Ŵ·X̃‖² s.t. Ŵ ∈ S (S given by its projection).

    Returns the feasible iterate with the lowest objective, and the objective of
    every feasible iterate Z_0 = Π(W), Z_1, … (the history the tests check)."""
    w = w.astype(np.float64)
    z = project(w)
    error = reconstruction_error(d)
    history = [error(z)]
    best, best_obj = z, history[0]
    if not iterations:
        return best, history
    evals, q = np.linalg.eigh(plus_diagonal(d.gcc, damping(d.gcc, damp)))
    target = d.target  # the Ŵ-step solves Ŵ·(G̃ + ρI) = W·E[x·x̃ᵀ] + ρ(Z − U)
    u = np.zeros_like(w)
    r = rho * (float(np.mean(np.diag(d.gcc))) or 1.0)
    for _ in range(iterations):
        w_hat = (((target + r * (z - u)) @ q) / (evals + r)) @ q.T
        z = project(w_hat + u)
        u += w_hat - z
        history.append(error(z))
        if history[-1] < best_obj:
            best, best_obj = z, history[-1]
        u /= 1.2  # scaled dual: U = Λ/ρ, and ρ grows by 1.2
        r *= 1.2
    return best, history


def masked_least_squares(d: LayerData, mask: np.ndarray, damp: float) -> np.ndarray:
    """argmin ‖W·X − Ŵ·X̃‖² with Ŵ zero outside ``mask``: per row,
    Ŵ[S] = (W·E[x·x̃ᵀ])[S]·G̃[S,S]⁻¹. Rows that share a support (a bcr block)
    share one solve; only each support's block of G̃ is damped (a copy of the
    whole in×in G̃ would be its largest allocation)."""
    lam = damping(d.gcc, damp)
    out = np.zeros(mask.shape, dtype=np.float64)
    groups: dict[bytes, list[int]] = {}
    for i, row in enumerate(mask):
        groups.setdefault(np.packbits(row).tobytes(), []).append(i)
    for rows in groups.values():
        support = np.flatnonzero(mask[rows[0]])
        if len(support):
            gs = plus_diagonal(d.gcc[np.ix_(support, support)], lam)
            out[np.ix_(rows, support)] = np.linalg.solve(gs, d.target[np.ix_(rows, support)].T).T
    return out


def projection(
    mask_of: Callable[[np.ndarray], np.ndarray], bits: int | None
) -> Callable[[np.ndarray], np.ndarray]:
    """Π_S for S = {masked} ∩ {per-row levels}: mask, then round each row to its levels."""

    def project(v: np.ndarray) -> np.ndarray:
        z = np.where(mask_of(v), v, 0.0)
        return quantize(z, bits).dequantized().astype(np.float64) if bits else z

    return project


# ----------------------------------------------------------------------------- method


def _mode(options: AdmmOptions, program: Program) -> str:
    if options.prune == "auto":
        return "structure" if program.structures else "unstructured"
    return options.prune


class Admm(LayerMethod):
    name = "admm"
    summary = "ADMM weight solving on calibration data (ADMM-NN): reconstruct each layer's outputs inside bcr's blocks, an unstructured or N:M mask, and int8/int4 levels"
    Options = AdmmOptions
    needs_calibration = True

    def start(self, program: Program, options: AdmmOptions, ctx: MethodContext) -> None:
        assert ctx.calibration is not None  # the driver checks needs_calibration
        if _mode(options, program) == "structure" and not program.structures:
            raise OptionError("admm.prune=structure: no earlier method left a structure (put bcr before admm: --plugins bcr,admm)")

    def admissible(self, layer: Layer) -> Skip | None:
        # the weights admm would solve: the layer's own, or those of the earlier method's structure
        # (penni's coefficient conv of a grouped conv is grouped too)
        solved = [w for w in layer.uses if layer.structure is None or w.param == layer.structure.param]
        if any(w.groups != 1 for w in solved):
            return Skip(SkipReason.UNSUPPORTED, f"{layer.kind} (admm solves dense layers: no calibration statistics for grouped convolutions)")
        return None if layer.structure is not None else layer.problem

    def plan_layers(self, layers: list[Layer], options: AdmmOptions, ctx: MethodContext) -> list[Plan | Skip]:
        """Every layer solved in program order, ``passes`` times; each pass (with
        ``sequential``) on the inputs that the weights solved so far produce."""
        plans: dict[str, Plan | Skip] = {}
        todo = []
        for layer in layers:
            mode = _mode(options, layer.program)
            if layer.structure is not None and mode != "structure":
                method = layer.structure.method
                raise OptionError(f"admm.prune={mode}: layer {layer.name} already has {method}'s structure; use admm.prune=structure (or auto) after {method}")
            m = options.for_layer(layer.name).m
            if layer.structure is None and mode == "structure" and options.quant == "none":
                plans[layer.name] = Skip(SkipReason.NOTHING_TO_DO, "no earlier method's structure to solve in, and no quantization")
            elif layer.structure is None and mode == "nm" and layer.in_dim % m:
                plans[layer.name] = Skip(SkipReason.DOES_NOT_FIT, f"{layer.name} has {layer.in_dim} inputs: N:M groups of m={m} do not divide them")
            else:
                todo.append((layer, mode, layer.matrix(), layer.structure.mask() if layer.structure is not None else None))
        matrices = {layer.name: (mode, matrix, fixed) for layer, mode, matrix, fixed in todo}

        inputs: dict[str, np.ndarray | None] = {}  # a layer's structure's input map, from effective() to its solve()

        def effective(layer: Layer) -> np.ndarray:
            """The weight whose outputs are reconstructed, in the layer's input space."""
            matrix = matrices[layer.name][1]
            t = inputs[layer.name] = layer.structure.structure.input_map() if layer.structure is not None else None
            return matrix if t is None else matrix @ t.T

        def solve(layer: Layer, data: LayerData | None) -> Plan:
            assert data is not None  # admm solves only measured layers (admissible): effective() ran for this one
            mode, matrix, fixed = matrices[layer.name]
            return self._solve(layer.name, matrix, data.through(inputs.pop(layer.name)), fixed, mode, options.for_layer(layer.name))

        plans.update(solve_in_order(self.name, [t[0] for t in todo], solve, ctx, options.sequential, options.passes, reference=effective))
        return [plans[layer.name] for layer in layers]

    def _solve(self, layer: str, matrix: np.ndarray, data: LayerData, fixed: np.ndarray | None, mode: str, options: AdmmOptions) -> Plan:
        """One layer's solution: the float32 out×in weights the program computes
        with (``dense``), their quantization, the mask's structure, and what to report."""
        bits = BITS.get(options.quant)
        if fixed is not None:
            mask_of = lambda v: fixed  # noqa: E731
        elif mode == "unstructured":
            mask_of = lambda v: unstructured_mask(v, options.density)  # noqa: E731
        elif mode == "nm":
            mask_of = lambda v: nm_mask(v, options.n, options.m)  # noqa: E731
        else:
            mask_of = lambda v: np.ones(v.shape, dtype=bool)  # noqa: E731
        # a fixed mask without levels is a linear subspace: the problem is convex and its optimum is
        # the masked least squares below, so ADMM's iterations could only approach it (and cost
        # two in×in products each: most of a calibrated bcr,admm compile)
        iterations = 0 if fixed is not None and not bits else options.iterations
        z, history = admm(matrix, data, projection(mask_of, bits), iterations, options.rho, options.damp)
        mask = fixed if fixed is not None else z != 0
        quantized = quantize(z.astype(np.float32), bits) if bits else None
        dense = quantized.dequantized() if quantized else masked_least_squares(data, mask, options.damp).astype(np.float32)
        structure = {"unstructured": lambda: Unstructured(mask), "nm": lambda: NM(options.n, options.m, mask)}.get(mode if fixed is None else "")
        details = {
            "density": float(mask.mean()),
            "objective_first": history[0],
            "objective_admm": min(history),
            "objective_final": objective(dense, data),
            "iterations": iterations,
            "sequential": options.sequential,
        }
        action = f"solved by ADMM ({_describe(mode, fixed is not None, options)}{', ' + options.quant if bits else ''})"
        return Plan(action, details, dense=dense, quantized=quantized, matrix=matrix, structure=structure() if structure else None)

    def rewrite(self, layer: Layer, plan: Plan, rw: LayerRewriter) -> np.ndarray:
        s = layer.structure
        weights = plan.quantized if plan.quantized is not None else plan.dense
        if s is not None:  # store inside the earlier method's layout
            stored = rw.store(weights, suffix=s.method, layout=s.layout, param=s.param)
            s.param = stored.param
        else:
            stored = rw.store(weights, suffix="admm")
            if plan.structure is not None:
                rw.publish(plan.structure, plan.matrix, stored.param, layer.layout())
        plan.details["storage"] = stored.storage
        return layer.from_matrix(plan.dense)


def _describe(mode: str, structured: bool, options: AdmmOptions) -> str:
    if structured:
        return "inside the earlier method's structure"
    return {"unstructured": f"unstructured, density {options.density:g}", "nm": f"{options.n}:{options.m} sparse"}.get(mode, "not pruned")


@hookimpl
def optc_register_methods(register):
    register(Admm())
