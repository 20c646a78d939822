"""lowrank: exact at full rank, FLOPs equal the hand count at reduced rank,
the rewrite is two thin matmuls, and LSTM steps share one pair of factors."""

import numpy as np
import pytest

from optc.api import MethodContext
from optc.plugins.lowrank import LowRank, LowRankOptions, choose_rank
from optc.targets.cpu import CpuOptions, CpuTarget
from optc.verify import compare, eager_outputs, verify
from tests.conftest import filecheck, lowered


def apply(name, **opts):
    model, p = lowered(name)
    before = p.layer_stats()
    result = LowRank().apply(p, LowRankOptions(**opts), MethodContext())
    p.verify()
    return model, p, before, result


def compiled_outputs(p):
    t = CpuTarget()
    return t.open(t.compile(p, CpuOptions()).vmfb, CpuOptions())(*p.example_inputs)


@pytest.mark.parametrize("name", ["mlp", "lstm", "transformer"])
def test_full_rank_compiled_output_equals_the_original(name):
    model, p, _, result = apply(name, rank=10_000, force=True)
    assert result.changes and all(c.action.startswith("factorized") for c in result.changes)
    out = compiled_outputs(p)
    err = compare(out, eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= 1e-5, err


def test_reduced_rank_flops_match_the_hand_count():
    model, p, before, result = apply("mlp", rank=32)
    after = p.layer_stats()
    rows = 4  # mlp's batch
    # 0: 256->512, 2: 512->256: each row costs in·r + r·out MACs
    assert after["0.weight"].macs == rows * (256 * 32 + 32 * 512)
    assert after["2.weight"].macs == rows * (512 * 32 + 32 * 256)
    assert after["0.weight"].params == 256 * 32 + 32 * 512
    # 4: 256->10 at rank 10 would cost more than dense: skipped, unchanged
    assert after["4.weight"].macs == before["4.weight"].macs
    skipped = {c.layer: c.action for c in result.changes if not c.changed}
    assert "would not reduce FLOPs" in skipped["4.weight"]
    # the compiled artifact reproduces the compressed reference
    check = verify(model.module, result.reference_weights, compiled_outputs(p), p.example_inputs)
    assert check.compile_error.max_rel <= 1e-5
    assert check.compression_error.max_rel > 1e-3  # rank 32 of random weights is lossy: the check is real


def test_reference_weight_is_the_rank_r_product():
    _, p, _, result = apply("mlp", rank=8)
    w = lowered("mlp")[1].params["0.weight"]
    ref = result.reference_weights["0.weight"]
    assert ref.shape == w.shape
    assert np.linalg.matrix_rank(ref.astype(np.float64), tol=1e-4) == 8
    u, s, vt = np.linalg.svd(w.astype(np.float64))
    best = (u[:, :8] * s[:8]) @ vt[:8]
    np.testing.assert_allclose(ref, best, atol=1e-5)


def test_energy_picks_the_smallest_sufficient_rank():
    s = np.array([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert choose_rank(s, LowRankOptions(energy=9 / 14)) == 1
    assert choose_rank(s, LowRankOptions(energy=0.9)) == 2
    assert choose_rank(s, LowRankOptions(energy=1.0)) == 3
    assert choose_rank(s, LowRankOptions(rank=99)) == 4


def test_reduction_picks_the_rank_that_cuts_flops_by_that_factor():
    _, p, before, result = apply("mlp", reduction=4.0)
    after = p.layer_stats()
    # 256x512: r = 256·512 / (4·768) = 42
    assert result.changes[0].details["rank"] == 42
    ratio = before["0.weight"].macs / after["0.weight"].macs
    assert 4.0 <= ratio < 4.1


def test_lstm_steps_share_one_pair_of_factor_constants():
    _, p, before, result = apply("lstm", rank=16, layers=("lstm.weight_hh_l1",))
    factors = [n for n in p.params if n.startswith("lstm.weight_hh_l1.lowrank")]
    assert sorted(factors) == ["lstm.weight_hh_l1.lowrank_in", "lstm.weight_hh_l1.lowrank_out"]
    steps = before["lstm.weight_hh_l1"].ops
    after = p.layer_stats()["lstm.weight_hh_l1"]
    assert after.ops == 2 * steps
    assert after.macs == steps * (64 * 16 + 16 * 256)
    assert "lstm.weight_hh_l1" not in p.params  # the dense gate weight is gone
    assert "lstm.weight_hh_l0" in p.params  # only the selected layer changed


def test_batched_input_is_collapsed_into_plain_matmuls():
    import torch

    from optc.load import Model
    from optc.lower import lower

    from examples.models import LSTMClassifier

    # at batch > 1 the LSTM's input projection over all steps is a batch_matmul
    # whose weight is one matrix broadcast over time
    torch.manual_seed(0)
    model = LSTMClassifier(features=32, hidden=48, layers=1).eval()
    p = lower(Model(model, (torch.randn(2, 6, 32),), "lstm-b2"))
    w = next(w for w in p.weighted_ops() if w.param == "lstm.weight_ih_l0")
    assert w.kind == "batch_matmul" and w.batch_shared
    result = LowRank().apply(p, LowRankOptions(rank=8, layers=("lstm.weight_ih_l0",)), MethodContext())
    p.verify()
    assert result.changes[0].action == "factorized rank 8"
    assert {op.name for op in p.ops()} >= {"linalg.matmul", "tensor.collapse_shape", "tensor.expand_shape"}
    assert "linalg.batch_matmul" not in {op.name for op in p.ops()}
    check = verify(model, result.reference_weights, compiled_outputs(p), p.example_inputs)
    assert check.compile_error.max_rel <= 1e-5


CHECKS = """
// CHECK-DAG: dense_resource<"0.weight.lowrank_in"> : tensor<256x32xf32>
// CHECK-DAG: dense_resource<"0.weight.lowrank_out"> : tensor<32x512xf32>
// CHECK: linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<4x256xf32>, tensor<256x32xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NEXT: linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<4x32xf32>, tensor<32x512xf32>) outs(%{{.*}} : tensor<4x512xf32>)
// CHECK-NOT: dense_resource<"0.weight">
"""


def test_rewritten_ir_filecheck(tmp_path):
    _, p, _, _ = apply("mlp", rank=32, layers=("0.weight",))
    filecheck(tmp_path, CHECKS, p.to_text())


def test_method_contract_with_the_testing_kit():
    from optc.testing import check_identity, check_method

    check_method(LowRank(), options={"rank": 4}, identity={"rank": 10_000, "force": "true"})
    check_identity(LowRank(), {"rank": 10_000, "force": "true", "conv": "spatial"}, model="cnn")


# --------------------------------------------------------------------------- convolutions


def conv_program():
    """(Model, Program) of a small CNN: a 3×3 conv, a strided dilated 3×3 conv, a 1×1 conv."""
    import torch
    from torch import nn

    from optc.load import Model
    from optc.lower import lower

    if "convs" not in _CONVS:
        torch.manual_seed(0)
        module = nn.Sequential(
            nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(32, 8, 1),
        ).eval()  # fmt: skip
        model = Model(module, (torch.randn(1, 4, 12, 12),), "convs")
        _CONVS["convs"] = (model, lower(model))
    model, p = _CONVS["convs"]
    return model, p.clone()


_CONVS: dict = {}


def apply_conv(**opts):
    model, p = conv_program()
    before = p.layer_stats()
    result = LowRank().apply(p, LowRankOptions(**opts), MethodContext())
    p.verify()
    return model, p, before, result


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_conv_full_rank_is_exact(scheme):
    model, p, _, result = apply_conv(rank=10_000, force=True, conv=scheme)
    changed = {c.layer: c.action for c in result.changes if c.changed}
    assert changed["0.weight"] == f"factorized rank {16 if scheme == 'channel' else 12} ({scheme})"
    assert ("4.weight" in changed) == (scheme == "channel")  # a 1×1 conv has no spatial factorization
    err = compare(compiled_outputs(p), eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= 1e-5, err


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_conv_reduction_cuts_macs_by_that_factor_and_the_artifact_matches(scheme):
    model, p, before, result = apply_conv(reduction=2.0, conv=scheme, layers=("2.weight",))
    after = p.layer_stats()
    r = result.changes[1].details["rank"]
    # 2.weight: 16 -> 32 channels, 3×3, padded input 16×16, output 6×6
    if scheme == "channel":
        assert after["2.weight"].macs == 36 * r * (16 * 9 + 32)
    else:
        assert after["2.weight"].macs == r * (6 * 16 * 16 * 3 + 36 * 32 * 3)
    ratio = before["2.weight"].macs / after["2.weight"].macs
    assert 2.0 <= ratio < 2.0 * (r + 1) / r
    check = verify(model.module, result.reference_weights, compiled_outputs(p), p.example_inputs)
    assert check.compile_error.max_rel <= 1e-5
    assert check.compression_error.max_rel > 1e-3


CONV_CHECKS = {
    "channel": """
// CHECK-DAG: dense_resource<"2.weight.lowrank_first"> : tensor<5x16x3x3xf32>
// CHECK-DAG: dense_resource<"2.weight.lowrank_second"> : tensor<32x5x1x1xf32>
// CHECK: linalg.conv_2d_nchw_fchw {dilations = dense<2> : tensor<2xi64>, strides = dense<2> : tensor<2xi64>} ins(%{{.*}}, %{{.*}} : tensor<1x16x16x16xf32>, tensor<5x16x3x3xf32>) outs(%{{.*}} : tensor<1x5x6x6xf32>)
// CHECK-NEXT: linalg.conv_2d_nchw_fchw {{.*}} ins(%{{.*}}, %{{.*}} : tensor<1x5x6x6xf32>, tensor<32x5x1x1xf32>) outs(%{{.*}} : tensor<1x32x6x6xf32>)
""",
    "spatial": """
// CHECK-DAG: dense_resource<"2.weight.lowrank_first"> : tensor<5x16x3x1xf32>
// CHECK-DAG: dense_resource<"2.weight.lowrank_second"> : tensor<32x5x1x3xf32>
// CHECK: linalg.conv_2d_nchw_fchw {dilations = dense<[2, 1]> : tensor<2xi64>, strides = dense<[2, 1]> : tensor<2xi64>} ins(%{{.*}}, %{{.*}} : tensor<1x16x16x16xf32>, tensor<5x16x3x1xf32>) outs(%{{.*}} : tensor<1x5x6x16xf32>)
// CHECK: linalg.conv_2d_nchw_fchw {dilations = dense<[1, 2]> : tensor<2xi64>, strides = dense<[1, 2]> : tensor<2xi64>} ins(%{{.*}}, %{{.*}} : tensor<1x5x6x16xf32>, tensor<32x5x1x3xf32>) outs(%{{.*}} : tensor<1x32x6x6xf32>)
""",
}


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_conv_rewritten_ir_filecheck(tmp_path, scheme):
    _, p, _, _ = apply_conv(rank=5, conv=scheme, layers=("2.weight",))
    filecheck(tmp_path, CONV_CHECKS[scheme], p.to_text())


def test_conv_none_leaves_convolutions_and_unnamed_unfactorable_convs_are_skipped():
    from optc.api import SkipReason

    _, p, _, result = apply_conv(rank=4, conv="none")
    assert all(c.reason == SkipReason.NOT_SELECTED for c in result.changes)
    _, p, _, result = apply_conv(rank=4, conv="spatial")
    skipped = {c.layer: c for c in result.changes if not c.changed}
    assert skipped["4.weight"].reason == SkipReason.UNSUPPORTED and "1×1" in skipped["4.weight"].action


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"conv": "spatial", "layers": ("4.weight",)}, "lowrank: layer 4.weight is a 1×1 convolution (spatial factorization needs KH, KW > 1"),
        ({"layers": ("dw.weight",)}, "lowrank: layer dw.weight is depthwise_conv2d"),
    ],
)
def test_conv_named_layer_it_cannot_factor_is_an_error(opts, message):
    from optc.errors import OptionError
    from optc.testing import lowered as small

    _, p = conv_program() if "4.weight" in opts["layers"] else small("cnn")
    with pytest.raises(OptionError) as e:
        LowRank().apply(p, LowRankOptions(rank=2, **opts), MethodContext())
    assert message in str(e.value) and "\n" not in str(e.value)
