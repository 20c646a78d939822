"""penni: exact with every basis kept (dense, strided, dilated, grouped convs),
the rewrite is a depthwise basis conv then a 1×1 coefficient conv, calibrated
coefficients reconstruct the layer's output better than the plain projection,
pruned coefficients drop unused basis maps, admm re-solves and quantizes the
coefficients, and bad settings are one clear error."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from optc.api import MethodContext, SkipReason, Status
from optc.errors import OptionError
from optc.load import Model
from optc.lower import lower
from optc.plugins.admm import Admm
from optc.plugins.bcr import Bcr
from optc.calibration import LayerData, objective
from optc.plugins.penni import Penni, coefficients, kernel_bases
from optc.structures import KernelBasis
from optc.testing import Run, check_artifact, check_method, compiled_outputs, options_for, synthetic_calibration
from optc.verify import compare, eager_outputs
from tests.conftest import filecheck


class TwoConvs(nn.Module):
    """A 3×3 conv, a strided and dilated 3×3 conv, and a grouped 3×3 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(torch.relu(self.b(torch.relu(self.a(x)))))


_PROGRAM: dict = {}


def two_convs():
    """(Model, fresh Program) of TwoConvs on one 4×12×12 image."""
    if not _PROGRAM:
        torch.manual_seed(0)
        model = Model(TwoConvs().eval(), (torch.randn(1, 4, 12, 12),), "two-convs")
        _PROGRAM["p"] = (model, lower(model))
    model, program = _PROGRAM["p"]
    return model, program.clone()


def apply(options: dict, ctx: MethodContext | None = None):
    model, p = two_convs()
    original = p.clone()
    result = Penni().apply(p, options_for(Penni(), options), ctx or MethodContext())
    p.verify()
    return Run(model, original, p, result)


def changes(run: Run) -> dict:
    return {c.layer: c for c in run.result.changes}


@pytest.mark.parametrize("form", ["broadcast", "channels_as_batch"])
def test_every_basis_kept_is_exact_for_strided_dilated_and_grouped_convs(form):
    run = apply({"bases": 9, "force": True, "form": form})
    assert all(c.status == Status.CHANGED for c in run.result.changes), run.result.changes
    err = compare(compiled_outputs(run.program), eager_outputs(run.model.module, run.program.example_inputs))
    assert err.max_rel <= 1e-5, err
    assert changes(run)["g.weight"].details["groups"] == 4


def test_fewer_bases_cut_macs_as_counted_and_the_artifact_matches_the_reference():
    run = apply({"bases": 2})
    before, after = run.original.layer_stats(), run.program.layer_stats()
    # b: 8 -> 16 channels, 3×3, output 6×6: 8·2 maps of 9 MACs, then 16×16 coefficients, per pixel
    assert after["b.weight"].macs == 36 * (8 * 2 * 9 + 16 * 16)
    assert before["b.weight"].macs == 36 * 16 * 8 * 9
    check = check_artifact(run)
    assert check.compression_error.max_rel > 1e-3  # 2 of 9 bases is lossy: the check is real


CHECKS = """
// CHECK-DAG: dense_resource<a.weight.penni_bases> : tensor<3x3x3xf32>
// CHECK-DAG: dense_resource<a.weight.penni_coef> : tensor<8x12x1x1xf32>
// CHECK: linalg.generic {{.*}} ins(%{{.*}} : tensor<1x4x14x14xf32>) outs(%{{.*}} : tensor<1x4x3x14x14xf32>)
// CHECK: linalg.depthwise_conv_2d_nchw_chw {{.*}} ins(%{{.*}}, %{{.*}} : tensor<1x12x14x14xf32>, tensor<12x3x3xf32>) outs(%{{.*}} : tensor<1x12x12x12xf32>)
// CHECK: linalg.conv_2d_nchw_fchw {{.*}} ins(%{{.*}}, %{{.*}} : tensor<1x12x12x12xf32>, tensor<8x12x1x1xf32>) outs(%{{.*}} : tensor<1x8x12x12xf32>)
// CHECK-NOT: dense_resource<a.weight>
"""


def test_rewritten_irfilecheck(tmp_path):
    run = apply({"bases": 3, "layers": "a.weight", "form": "broadcast"})
    filecheck(tmp_path, CHECKS, run.program.to_text())


CHECKS_CHANNELS_AS_BATCH = """
// CHECK-DAG: dense_resource<a.weight.penni_bases> : tensor<3x1x3x3xf32>
// CHECK: tensor.collapse_shape {{.*}} : tensor<1x4x14x14xf32> into tensor<4x14x14xf32>
// CHECK: linalg.conv_2d_nchw_fchw {{.*}} ins(%{{.*}}, %{{.*}} : tensor<4x1x14x14xf32>, tensor<3x1x3x3xf32>) outs(%{{.*}} : tensor<4x3x12x12xf32>)
// CHECK: tensor.expand_shape {{.*}} : tensor<12x12x12xf32> into tensor<1x12x12x12xf32>
// CHECK: linalg.conv_2d_nchw_fchw {{.*}} ins(%{{.*}}, %{{.*}} : tensor<1x12x12x12xf32>, tensor<8x12x1x1xf32>) outs(%{{.*}} : tensor<1x8x12x12xf32>)
// CHECK-NOT: linalg.depthwise_conv_2d_nchw_chw
"""


def test_channels_as_batch_form_is_one_regular_conv_with_the_bases_as_filters(tmp_path):
    run = apply({"bases": 3, "layers": "a.weight"})  # the default form
    filecheck(tmp_path, CHECKS_CHANNELS_AS_BATCH, run.program.to_text())
    check_artifact(run)


def test_calibrated_coefficients_reconstruct_the_output_better_than_the_projection():
    model, p = two_convs()
    calibration = synthetic_calibration(p, samples=16)
    run = apply({"bases": 2, "layers": "b.weight"}, MethodContext(calibration=calibration))
    change = changes(run)["b.weight"]
    assert change.details["calibrated"]
    gram = calibration.gram("b.weight")  # b reads ReLU outputs: correlated inputs
    matrix = p.layers()[1].matrix()
    _, vt = kernel_bases(matrix, 9)
    t = np.kron(np.eye(8), vt[:2].T)
    plain = objective(coefficients(matrix, vt[:2], None, None, 0.0) @ t.T, LayerData.same(gram, matrix))
    assert change.details["output_error"] < 0.9 * plain, (change.details["output_error"], plain)
    # the program computes with the calibrated weights
    ref = run.result.reference_weights["b.weight"].reshape(16, -1)
    assert objective(ref, LayerData.same(gram, matrix)) == pytest.approx(change.details["output_error"], rel=1e-3)
    check_artifact(run)


def test_sequential_fit_corrects_the_error_the_earlier_decomposed_layer_passes_on():
    _, p = two_convs()
    calibration = synthetic_calibration(p, samples=16)
    options = {"bases": 2, "layers": "a.weight,b.weight"}
    seq_run = apply(options, MethodContext(calibration=calibration))
    seq = changes(seq_run)
    independent_run = apply({**options, "sequential": "false"}, MethodContext(calibration=calibration))
    independent = changes(independent_run)
    assert seq["b.weight"].details["sequential"] and not independent["b.weight"].details["sequential"]
    assert not seq["a.weight"].details["sequential"]  # the first layer reads the model's input
    # b's inputs as the decomposed a produces them (a is fit the same way in both runs)
    a = independent_run.result.reference_weights["a.weight"]
    matrix = p.layers()[1].matrix()
    data = calibration.moments("b.weight", {"a.weight": a}, matrix)
    independent_b = independent_run.result.reference_weights["b.weight"].reshape(16, -1)
    _, vt = kernel_bases(matrix, 9)
    plain_b = coefficients(matrix, vt[:2], None, None, 0.0) @ np.kron(np.eye(8), vt[:2].T).T
    seq_b = seq_run.result.reference_weights["b.weight"].reshape(16, -1)
    assert objective(seq_b, data) == pytest.approx(seq["b.weight"].details["output_error"], rel=1e-3)
    assert objective(seq_b, data) < 0.9 * objective(independent_b, data)
    assert objective(independent_b, data) < objective(plain_b, data)


def test_pruned_coefficients_are_refit_and_unused_basis_maps_are_not_computed():
    _, p = two_convs()
    calibration = synthetic_calibration(p, samples=16)
    run = apply({"bases": 4, "coef_keep": 0.05, "layers": "b.weight"}, MethodContext(calibration=calibration))
    s = run.program.structures["b.weight"].structure
    assert isinstance(s, KernelBasis)
    maps = s.maps()
    assert maps.shape[1] < 8 * 4  # some input channel·basis maps no coefficient uses
    assert abs(s.keep.mean() - 0.05) < 0.01
    ops = [op.name for op in run.program.ops()]
    assert "linalg.depthwise_conv_2d_nchw_chw" in ops
    shapes = {tuple(run.program.params[n].shape) for n in run.program.params if n.startswith("b.weight.penni")}
    assert (16, maps.shape[1], 1, 1) in shapes and (maps.shape[1], 3, 3) in shapes
    check_artifact(run)
    # refit on the kept support beats keeping the largest calibrated coefficients as they were
    matrix = run.original.layers()[1].matrix()
    gram = calibration.gram("b.weight")
    t = s.input_map()
    ref = run.result.reference_weights["b.weight"].reshape(16, -1)
    data = LayerData.same(gram, matrix)
    unrefit = np.where(s.keep, coefficients(matrix, s.bases.astype(np.float64), None, data, 0.001), 0) @ t.T
    assert objective(ref, data) < objective(unrefit, data)


def test_admm_quantizes_the_published_coefficients_to_int8():
    penni = {"bases": 3, "layers": "a.weight,b.weight"}
    model, p = two_convs()
    ctx = MethodContext(calibration=synthetic_calibration(p, samples=8))
    Penni().apply(p, options_for(Penni(), penni), ctx)
    coef = p.structures["a.weight"].param
    original = p.clone()
    result = Admm().apply(p, options_for(Admm(), {"quant": "int8"}), ctx)
    p.verify()
    assert "solved by ADMM (inside the earlier method's structure, int8)" in changes(Run(model, original, p, result))["a.weight"].action
    levels = [n for n in p.params if n.startswith("a.weight.penni") and n.endswith(".levels")]
    assert levels and p.params[levels[0]].dtype == np.int8 and p.params[levels[0]].shape == (8, 12, 1, 1)
    assert coef not in p.params
    check_artifact(Run(model, original, p, result))


def test_admm_after_penni_skips_a_grouped_conv_with_the_reason():
    model, p = two_convs()
    ctx = MethodContext(calibration=synthetic_calibration(p, samples=8))
    penni = Penni().apply(p, options_for(Penni(), {"bases": 2, "force": True}), ctx)
    assert {"a.weight", "b.weight", "g.weight"} <= set(p.structures)  # penni decomposed the grouped conv too
    original = p.clone()
    result = Admm().apply(p, options_for(Admm(), {"quant": "int8", "iterations": 2}), ctx)
    p.verify()
    c = changes(Run(model, original, p, result))
    assert c["g.weight"].reason is SkipReason.UNSUPPORTED and "grouped" in c["g.weight"].action
    assert c["a.weight"].status == Status.CHANGED and c["b.weight"].status == Status.CHANGED
    # the program computes with penni's g and admm's a and b
    both = dataclasses.replace(result, reference_weights={**penni.reference_weights, **result.reference_weights})
    check_artifact(Run(model, original, p, both))


def test_bcr_after_penni_block_prunes_the_coefficient_conv_and_admm_still_solves_inside():
    model, p = two_convs()
    ctx = MethodContext(calibration=synthetic_calibration(p, samples=8))
    original = p.clone()
    Penni().apply(p, options_for(Penni(), {"bases": 3, "layers": "a.weight,b.weight"}), ctx)
    penni_macs = p.layer_stats()
    coef = {layer: p.structures[layer].param for layer in ("a.weight", "b.weight")}
    dense_coef = {layer: p.structures[layer].matrix for layer in coef}
    result = Bcr().apply(p, options_for(Bcr(), {"block": 4, "col_keep": 0.5, "row_keep": 1, "col_group": 4, "layers": "a.weight,b.weight"}), ctx)
    p.verify()
    c = changes(Run(model, original, p, result))
    assert "penni's coefficient 1×1 conv" in c["b.weight"].action and c["b.weight"].details["in"] == 8 * 3
    assert not set(coef.values()) & set(p.params)  # the dense coefficient convs are gone
    assert p.params["b.weight.bcr"].shape == (4, 12, 4)  # 4 blocks × half of the 24 basis maps × 4 rows
    after = p.layer_stats()
    # b: the basis maps stay (8·3 maps of 9 MACs per pixel), the coefficient conv keeps half its columns
    assert after["b.weight"].macs == 36 * (8 * 3 * 9 + 16 * 12)
    assert after["b.weight"].macs < penni_macs["b.weight"].macs
    # the program computes with penni's bases and bcr's pruned coefficients
    s = p.structures["b.weight"].structure
    assert isinstance(s, KernelBasis) and s.keep.mean() == pytest.approx(0.5)
    expected = np.where(s.keep, dense_coef["b.weight"], 0) @ s.input_map().T
    np.testing.assert_allclose(result.reference_weights["b.weight"].reshape(16, -1), expected, rtol=1e-5, atol=1e-6)
    check_artifact(Run(model, original, p, result))
    # admm re-solves and quantizes the pruned coefficients inside bcr's blocks
    pruned = p.clone()
    result = Admm().apply(p, options_for(Admm(), {"quant": "int8"}), ctx)
    p.verify()
    assert "inside the earlier method's structure, int8" in changes(Run(model, pruned, p, result))["b.weight"].action
    levels = [n for n in p.params if n.startswith("b.weight.bcr") and n.endswith(".levels")]
    assert levels and p.params[levels[0]].dtype == np.int8 and p.params[levels[0]].shape == (4, 12, 4)
    ref = result.reference_weights["b.weight"].reshape(16, -1) @ np.linalg.pinv(s.input_map().T)
    assert np.all(np.abs(ref[~s.keep]) < 1e-5)  # still zero outside bcr's blocks
    check_artifact(Run(model, original, p, result))


def test_method_contract_with_the_testing_kit():
    check_method(Penni(), options={"bases": 2}, identity={"bases": 9, "force": "true"}, models=("cnn",))


def test_depthwise_and_1x1_convs_and_linear_layers_are_skipped_with_their_reason():
    (run,) = check_method(Penni(), options={"bases": 2}, models=("cnn",))
    c = changes(run)
    assert c["stem.weight"].status == Status.CHANGED
    assert c["dw.weight"].reason == SkipReason.NOT_PROFITABLE  # a depthwise kernel per channel: bases never pay
    assert c["pw.weight"].reason == SkipReason.UNSUPPORTED and "1×1" in c["pw.weight"].action
    assert c["fc1.weight"].reason == SkipReason.UNSUPPORTED


@pytest.mark.parametrize(
    "options, message",
    [
        ({"bases": 0}, "bases=0: must be an integer >= 1"),
        ({"coef_keep": 0}, "coef_keep=0.0: must be in (0, 1]"),
        ({"coef_keep": 1.5}, "coef_keep=1.5: must be in (0, 1]"),
        ({"energy": 0}, "energy=0.0: must be in (0, 1]"),
        ({"bases": 10, "layers": "a.weight"}, "bases=10 is above the full rank 9 of layer a.weight's 3×3 kernels"),
        ({"override": "g.weight:bases=12"}, "bases=12 is above the full rank 9 of layer g.weight's"),
    ],
)
def test_bad_settings_are_one_clear_error(options, message):
    with pytest.raises(OptionError, match=None) as e:
        apply(options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_named_layer_penni_cannot_decompose_is_an_error():
    with pytest.raises(OptionError) as e:
        check_method(Penni(), options={"layers": "pw.weight"}, models=("cnn",))
    assert "layer pw.weight is a 1×1 convolution" in str(e.value)


def test_bases_above_the_full_rank_skip_unnamed_layers():
    run = apply({"bases": 10})
    assert {c.reason for c in run.result.changes} == {SkipReason.DOES_NOT_FIT}


def test_cli_bad_bases_is_one_line_nonzero_exit_and_no_file(tmp_path):
    from tests.conftest import optc_cli

    out = tmp_path / "m.vmfb"
    proc = optc_cli("compile", "--plugins", "penni", "--opt", "penni.bases=10", "--opt", "penni.layers=stem.weight", "examples.models:cnn", "-o", str(out))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].endswith("bases=10 is above the full rank 9 of layer stem.weight's 3×3 kernels: use 1…9, or penni.skip=stem.weight"), proc.stderr
    assert not list(tmp_path.iterdir())
