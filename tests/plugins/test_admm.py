"""admm: the objective decreases over the iterations, masks have the asked-for
structure, quantized weights take only the declared levels (stored narrow), and
the artifact reproduces the solved reference."""

from pathlib import Path

import numpy as np
import pytest

from optc.api import MethodContext, SkipReason, build_options
from optc.calibration import Calibration, Samples
from optc.driver import _host_runner
from optc.errors import OptionError
from optc.plugins.admm import Admm, LayerData, admm, masked_least_squares, nm_mask, objective, projection, unstructured_mask
from optc.plugins.bcr import Bcr
from optc.storage import unpack_int4
from optc.storage import QMAX
from optc.targets.cpu import CpuOptions, CpuTarget
from optc.verify import verify
from tests.conftest import lowered


def correlated_layer(seed=0, out=48, k=64, rows=512):
    """A weight and the Gram matrix of correlated inputs (what makes reconstruction matter)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(k, k)) * np.linspace(1.0, 0.05, k)
    x = rng.normal(size=(rows, k)) @ mix
    return rng.normal(size=(out, k)), x.T @ x / rows


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_objective_decreases_over_iterations(bits):
    w, g = correlated_layer()
    project = projection(lambda v: unstructured_mask(v, 0.25), bits)
    best, history = admm(w, LayerData.same(g, w), project, iterations=40, rho=0.05, damp=0.01)
    assert len(history) == 41
    assert history[-1] < 0.35 * history[0], history  # far better than pruning/rounding W itself
    # While ρ is small the iterates explore (the objective may rise); from its peak
    # on, the objective falls and never rises again by more than 1% of where it began.
    after_peak = np.array(history[int(np.argmax(history)):])
    assert (np.diff(after_peak) <= 0.01 * history[0]).all(), history
    assert objective(best, LayerData.same(g, w)) == pytest.approx(min(history))


def test_least_squares_polish_is_optimal_for_its_mask():
    w, g = correlated_layer(1)
    d = LayerData.same(g, w)
    mask = unstructured_mask(w, 0.3)
    solved = masked_least_squares(d, mask, damp=0.0)
    assert not solved[~mask].any()
    base = objective(solved, d)
    rng = np.random.default_rng(0)
    for _ in range(5):  # any perturbation inside the mask is worse
        assert objective(solved + mask * rng.normal(scale=1e-2, size=w.shape), d) > base
    assert base < objective(np.where(mask, w, 0), d)  # and better than keeping W's values


def test_nm_mask_keeps_n_of_every_m():
    w, _ = correlated_layer(2)
    mask = nm_mask(w, 2, 4)
    assert (mask.reshape(w.shape[0], -1, 4).sum(axis=2) == 2).all()


def calibration_for(p, n=64, seed=0):
    shape = p.example_inputs[0].shape
    x = np.random.default_rng(seed).normal(size=(n, *shape[1:])).astype(np.float32)
    return Calibration(Samples(Path("synthetic.npz"), [x], None), p.clone(), _host_runner)


def run_admm(p, ctx, **opts):
    options = build_options("admm", Admm.Options, {k: str(v) for k, v in opts.items()})
    result = Admm().apply(p, options, ctx)
    p.verify()
    return result


def compiled(p):
    t = CpuTarget()
    return t.open(t.compile(p, CpuOptions()).vmfb, CpuOptions())(*p.example_inputs)


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_weights_take_only_the_declared_levels(quant):
    model, p = lowered("mlp")
    ctx = MethodContext(calibration=calibration_for(p))
    result = run_admm(p, ctx, prune="none", quant=quant, iterations=10)
    bits = {"int8": 8, "int4": 4}[quant]
    levels = [n for n in p.params if n.endswith(".levels")]
    assert sorted(levels) == ["0.weight.admm.levels", "2.weight.admm.levels", "4.weight.admm.levels"]
    for name in levels:
        stored = p.params[name]
        assert stored.dtype in (np.int8, np.uint8)
        values = unpack_int4(stored, stored.ndim - 1) if bits == 4 and stored.dtype == np.uint8 else stored
        assert values.min() >= -QMAX[bits] and values.max() <= QMAX[bits]
    assert p.params["0.weight.admm.levels"].nbytes == 512 * 256 * bits // 8  # stored narrow
    assert {c.details["storage"] for c in result.changes} == {"int8" if bits == 8 else "int4 (two per byte)"}
    stats = p.layer_stats()  # the weight still traces (through the dequantize op) to its layer
    assert set(stats) == {"0.weight", "2.weight", "4.weight"} and stats["0.weight"].macs == 4 * 512 * 256
    for layer, ref in result.reference_weights.items():
        scales = p.params[f"{layer}.admm.scales"]
        ratio = ref / scales[:, None]
        assert np.allclose(ratio, np.rint(ratio), atol=1e-3)  # every weight is a level times its channel's scale
        assert np.abs(np.rint(ratio)).max() <= QMAX[bits]
    check = verify(model.module, result.reference_weights, compiled(p), p.example_inputs)
    assert check.compile_error.max_rel <= 1e-4, check
    assert p.has_narrow_weights()


def test_admm_inside_bcr_structure_beats_bcr_alone():
    model, p = lowered("mlp")
    ctx = MethodContext(calibration=calibration_for(p))
    bcr = Bcr().apply(p, build_options("bcr", Bcr.Options, {"block": "2", "col_keep": "0.25", "row_keep": "1"}), ctx)
    masks = {layer: s.mask() for layer, s in p.structures.items()}
    result = run_admm(p, ctx, quant="int8")
    for change in result.changes:
        assert change.details["objective_final"] < change.details["objective_first"], change
    for layer, ref in result.reference_weights.items():
        assert not ref[~masks[layer]].any()  # admm stayed inside bcr's blocks
        assert not np.array_equal(ref, bcr.reference_weights[layer])
    assert "0.weight.bcr.levels" in p.params and p.params["0.weight.bcr.levels"].dtype == np.int8
    check = verify(model.module, result.reference_weights, compiled(p), p.example_inputs)
    assert check.compile_error.max_rel <= 1e-4, check


def test_inside_a_fixed_mask_without_levels_the_exact_optimum_is_taken_without_iterations():
    model, p = lowered("mlp")
    cal = calibration_for(p)
    ctx = MethodContext(calibration=cal)
    original = {layer.name: layer.matrix() for layer in p.layers()}
    Bcr().apply(p, build_options("bcr", Bcr.Options, {"block": "2", "col_keep": "0.25", "row_keep": "0.5"}), ctx)
    masks = {layer: s.mask() for layer, s in p.structures.items()}
    result = run_admm(p, ctx, sequential="false")
    assert len(result.changes) == 3
    for change in result.changes:
        w, mask = original[change.layer], masks[change.layer]
        d = LayerData.same(cal.gram(change.layer), w)
        assert change.details["iterations"] == 0, change
        exact = masked_least_squares(d, mask, damp=0.01)
        np.testing.assert_allclose(result.reference_weights[change.layer], exact, rtol=1e-3, atol=1e-5)
        # 40 ADMM iterations in the same constraint set reach no lower objective
        best, _ = admm(w, d, projection(lambda v, m=mask: m, None), 40, 0.05, 0.01)
        assert change.details["objective_final"] <= objective(best, d) * (1 + 1e-6)


def test_unstructured_density_is_what_was_asked():
    model, p = lowered("mlp")
    result = run_admm(p, MethodContext(calibration=calibration_for(p)), prune="unstructured", density=0.3, iterations=10)
    for change in result.changes:
        ref = result.reference_weights[change.layer]
        assert change.details["density"] == round(0.3 * ref.size) / ref.size
        # at most that many nonzeros: a weight on an input that is always 0 (a dead ReLU) solves to 0
        assert round(0.3 * ref.size) - 8 <= np.count_nonzero(ref) <= round(0.3 * ref.size)
    check = verify(model.module, result.reference_weights, compiled(p), p.example_inputs)
    assert check.compile_error.max_rel <= 1e-4


def test_structure_mode_without_an_earlier_structure_is_an_error():
    _, p = lowered("mlp")
    with pytest.raises(OptionError, match="put bcr before admm"):
        run_admm(p, MethodContext(calibration=calibration_for(p)), prune="structure")


def test_nm_groups_that_do_not_fit_are_skipped_unless_named():
    # Method API v2: a setting that does not fit a layer's shape skips it with the reason;
    # naming the layer makes it an error.
    _, p = lowered("mlp")
    ctx = MethodContext(calibration=calibration_for(p))
    in_dims = {layer.name: layer.in_dim for layer in p.layers()}
    result = run_admm(p, ctx, prune="nm", n=1, m=3, iterations=2)
    skipped = {c.layer for c in result.changes if c.reason is SkipReason.DOES_NOT_FIT and "do not divide" in c.action}
    assert skipped == {name for name, k in in_dims.items() if k % 3}
    assert skipped, "the mlp must have a layer whose inputs m=3 does not divide"
    _, p = lowered("mlp")
    named = sorted(skipped)[0]
    with pytest.raises(OptionError, match=f"{named}.*do not divide"):
        run_admm(p, MethodContext(calibration=calibration_for(p)), prune="nm", n=1, m=3, iterations=2, layers=named)


def test_method_contract_with_the_testing_kit():
    from optc.testing import check_method

    # no identity setting: a least-squares re-solve on 32 random samples is not the original weight
    check_method(Admm(), options={"iterations": 3, "quant": "int8"})
