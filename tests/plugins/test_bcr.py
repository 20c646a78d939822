"""bcr: keep rate 1.0 is exact, the rewritten program has the block structure the
options ask for (one column group: gather -> compact matmul -> scatter; several:
gather -> batch_matmul over groups -> scatter), the compiled artifact
reproduces the pruned reference, and bad options fail with one clear message."""

import numpy as np
import pytest
import torch

from optc.api import MethodContext, build_options
from optc.errors import OptionError
from optc.plugins.bcr import Bcr, ScatterWindows, choose_blocks, row_positions
from optc.structures import BlockColumnRow
from optc.targets.cpu import CpuOptions, CpuTarget
from optc.verify import compare, eager_outputs, verify
from tests.conftest import filecheck, lowered


def apply(name, **opts):
    model, p = lowered(name)
    options = build_options("bcr", Bcr.Options, {k: str(v) for k, v in opts.items()})
    result = Bcr().apply(p, options, MethodContext())
    p.verify()
    return model, p, result


def compiled_outputs(p):
    t = CpuTarget()
    return t.open(t.compile(p, CpuOptions()).vmfb, CpuOptions())(*p.example_inputs)


@pytest.mark.parametrize(
    "name, opts",
    [
        ("mlp", {"block": 2}),
        ("lstm", {"block": 16, "skip": "fc.weight"}),  # per-step gate matmuls, 4·64 rows
        ("cnn", {"block": 4, "skip": "fc2.weight"}),  # stem conv via im2col gather, fc1
        ("transformer", {"block": 4, "override": "head.weight:block=2"}),  # batched (3-D) inputs
    ],
)
def test_keep_rate_one_is_exact(name, opts):
    model, p, result = apply(name, col_keep=1.0, row_keep=1.0, **opts)
    pruned = [c for c in result.changes if c.action.startswith("pruned")]
    assert pruned and all(c.details["density"] == 1.0 for c in pruned)
    err = compare(compiled_outputs(p), eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= 1e-5, err


@pytest.mark.parametrize(
    "name, opts",
    [
        ("mlp", {"block": 4, "col_keep": 0.25, "row_keep": 0.5, "override": "4.weight:block=2"}),
        ("mlp", {"block": 4, "col_keep": 0.25, "row_keep": 0.5, "col_group": 4, "override": "4.weight:block=2:col_group=2"}),
        ("mlp", {"block": 4, "col_keep": 0.5, "row_keep": 0.5, "col_group": 128}),  # several groups of several blocks
        ("lstm", {"block": 16, "col_keep": 0.5, "row_keep": 0.5, "col_group": 0, "skip": "fc.weight"}),
        ("lstm", {"block": 16, "col_keep": 0.5, "row_keep": 0.5, "col_group": 16, "skip": "fc.weight"}),
        ("cnn", {"block": 4, "col_keep": 0.5, "row_keep": 0.5, "col_group": 0, "skip": "fc2.weight"}),
        ("cnn", {"block": 4, "col_keep": 0.5, "row_keep": 0.5, "col_group": 4, "skip": "fc2.weight"}),
        ("transformer", {"block": 16, "col_keep": 0.25, "row_keep": 1.0, "override": "head.weight:block=4"}),
    ],
)
def test_pruned_artifact_matches_the_pruned_reference(name, opts):
    model, p, result = apply(name, **opts)
    check = verify(model.module, result.reference_weights, compiled_outputs(p), p.example_inputs)
    assert check.compile_error.max_rel <= 1e-5, check
    assert check.compression_error.max_rel > 1e-3  # weights really were pruned


def test_block_structure_follows_the_options():
    _, p, result = apply("mlp", block=4, col_keep=0.25, row_keep=0.5, col_group=4, override="4.weight:block=2:col_group=2")
    # 0.weight is 512 out x 256 in: 128 blocks of 4 rows, 64 columns and 2 rows kept per block
    s = p.structures["0.weight"].structure
    assert (s.blocks, s.cols.shape, s.rows.shape) == (128, (128, 64), (128, 2))
    mask = s.mask()
    for b in range(128):
        block = mask[4 * b: 4 * b + 4]
        assert block.any(axis=1).sum() == 2  # whole rows pruned inside the block
        kept_cols = block.any(axis=0)
        assert kept_cols.sum() == 64  # whole columns pruned inside the block
        assert (block[block.any(axis=1)] == kept_cols).all()  # every kept row keeps exactly those columns
    ref = result.reference_weights["0.weight"]
    assert not ref[~mask].any()  # pruned weights are zero in the reference
    assert np.allclose(ref[mask], lowered("mlp")[1].params["0.weight"][mask])  # kept weights are untouched
    stats = p.layer_stats()["0.weight"]
    assert stats.params == 128 * 64 * 2
    assert stats.macs == 4 * 128 * 64 * 2  # batch 4 rows through every compact block


CHECKS = """
// CHECK: dense_resource<"0.weight.bcr"> : tensor<128x64x2xf32>
// CHECK: linalg.generic
// CHECK: tensor.extract
// CHECK: -> tensor<128x4x64xf32>
// CHECK: linalg.fill
// CHECK-NEXT: linalg.batch_matmul ins(%{{.*}}, %{{.*}} : tensor<128x4x64xf32>, tensor<128x64x2xf32>) outs(%{{.*}} : tensor<128x4x2xf32>)
// CHECK-NEXT: tensor.expand_shape {{.*}} into tensor<4x128x4xf32>
// CHECK-NEXT: linalg.generic {{.*}} ins(%{{.*}}, %{{.*}} : tensor<128xf32>, tensor<128x4xi32>) outs(%{{.*}} : tensor<4x128x4xf32>)
// CHECK-COUNT-2: tensor.extract %{{.*}} : tensor<128x4x2xf32>
// CHECK-NOT: tensor.extract %{{.*}} : tensor<128x4x2xf32>
// CHECK: -> tensor<4x128x4xf32>
// CHECK-NEXT: tensor.collapse_shape {{.*}} into tensor<4x512xf32>
// CHECK-NOT: dense_resource<"0.weight">
"""


# col_group=0 (the whole layer): one gather of the kept inputs, one matmul, one scatter.
ONE_GROUP_CHECKS = """
// CHECK: dense_resource<"0.weight.bcr"> : tensor<64x256xf32>
// CHECK: linalg.generic
// CHECK: tensor.extract
// CHECK: -> tensor<1x4x64xf32>
// CHECK: linalg.fill
// CHECK-NEXT: linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<4x64xf32>, tensor<64x256xf32>) outs(%{{.*}} : tensor<4x256xf32>)
// CHECK: tensor.expand_shape {{.*}} into tensor<4x32x16xf32>
// CHECK-NEXT: linalg.generic {{.*}} ins(%{{.*}}, %{{.*}} : tensor<32xf32>, tensor<32x16xi32>) outs(%{{.*}} : tensor<4x32x16xf32>)
// CHECK-COUNT-8: tensor.extract %{{.*}} : tensor<1x4x256xf32>
// CHECK-NOT: tensor.extract %{{.*}} : tensor<1x4x256xf32>
// CHECK: -> tensor<4x32x16xf32>
// CHECK-NEXT: tensor.collapse_shape {{.*}} into tensor<4x512xf32>
// CHECK-NOT: linalg.batch_matmul
// CHECK-NOT: dense_resource<"0.weight">
"""

# col_group 128 rows = 32 blocks of 4: a batch_matmul over 4 groups, each 64 columns × 32·2 rows.
GROUPS_CHECKS = """
// CHECK: dense_resource<"0.weight.bcr"> : tensor<4x64x64xf32>
// CHECK: -> tensor<4x4x64xf32>
// CHECK: linalg.batch_matmul ins(%{{.*}}, %{{.*}} : tensor<4x4x64xf32>, tensor<4x64x64xf32>) outs(%{{.*}} : tensor<4x4x64xf32>)
// CHECK: -> tensor<4x512xf32>
"""


@pytest.mark.parametrize("checks, col_group", [(CHECKS, 4), (ONE_GROUP_CHECKS, 0), (GROUPS_CHECKS, 128)])
def test_rewritten_irfilecheck(tmp_path, checks, col_group):
    _, p, _ = apply("mlp", block=4, col_keep=0.25, row_keep=0.5, col_group=col_group, layers="0.weight")
    filecheck(tmp_path, checks, p.to_text())


# The reference LSTM at batch 1: its input projection (12 steps) scatters by
# window, its recurrent step (one row) per output row, fused into the gates,
# from the same tables.
ONE_ROW_CHECKS = """
// CHECK: linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<12x8xf32>, tensor<8x128xf32>)
// CHECK: tensor.expand_shape {{.*}} into tensor<12x16x16xf32>
// CHECK: linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<1x32xf32>, tensor<32x128xf32>)
// CHECK-NEXT: tensor.expand_shape {{.*}} into tensor<1x1x128xf32>
// CHECK-NEXT: tensor.collapse_shape {{.*}} : tensor<16x16xi32> into tensor<256xi32>
// CHECK-NEXT: linalg.generic {{.*}} ins(%{{.*}} : tensor<256xi32>) outs(%{{.*}} : tensor<1x256xf32>)
// CHECK-NOT: into tensor<1x16x16xf32>
"""


def test_a_one_row_matmul_scatters_per_row_and_longer_ones_by_window(tmp_path):
    _, p, _ = apply("lstm", block=16, skip="fc.weight")
    filecheck(tmp_path, ONE_ROW_CHECKS, p.to_text())


@pytest.mark.parametrize("block, groups, rows", [(16, 1, 8), (64, 1, 32), (4, 8, 2), (4, 64, 1), (8, 1, 8)])
def test_scatter_windows_address_every_kept_row_and_only_those(block, groups, rows):
    rng = np.random.default_rng(block + groups)
    n, k = 256, 32
    m = rng.standard_normal((n, k))
    cols, kept_rows = choose_blocks(m, block, 8, rows, None, n // groups)
    s = BlockColumnRow((n, k), block, cols, kept_rows)
    blk, pos = row_positions(s)
    w = ScatterWindows.of(s)
    channels = s.blocks // s.groups * rows
    assert (n // groups) % w.lanes == 0 and 0 <= w.start.min() and (w.start + w.width <= channels).all()
    t, lane = np.divmod(np.arange(n), w.lanes)
    off = w.off[t, lane]
    assert ((off >= 0) == (pos >= 0)).all() and off.max() < w.width
    kept = pos >= 0
    assert (w.grp[t] == blk).all() and (w.start[t][kept] + off[kept] == pos[kept]).all()


def test_col_group_shares_columns_across_its_blocks():
    _, p, _ = apply("mlp", block=4, col_keep=0.25, row_keep=0.5, col_group=128, layers="0.weight")
    s = p.structures["0.weight"].structure
    assert s.cols.shape == (4, 64) and len({tuple(c) for c in s.cols}) == 4
    mask = s.mask()
    for g in range(4):
        kept = mask[128 * g: 128 * g + 128]
        assert (kept[kept.any(axis=1)] == np.isin(np.arange(256), s.cols[g])).all()  # every kept row of the group: its columns


def test_all_columns_kept_is_one_matmul_without_a_gather():
    _, p, _ = apply("mlp", block=4, col_keep=1.0, row_keep=0.5, layers="0.weight")
    s = p.structures["0.weight"]
    assert s.structure.shared and p.params[s.param].shape == (256, 128 * 2)
    assert not any(op.name == "linalg.batch_matmul" for op in p.ops())


def test_activation_score_keeps_the_columns_that_carry_signal():
    # Column 0 has small weights but a large input; magnitude drops it, activation keeps it.
    w = np.array([[0.1, 1.0, 0.9, 0.5]] * 2)
    gram = np.diag([1000.0, 1.0, 1.0, 1.0])
    by_magnitude, _ = choose_blocks(w, 2, 2, 2, None)
    by_activation, _ = choose_blocks(w, 2, 2, 2, gram)
    assert by_magnitude.tolist() == [[1, 2]]
    assert by_activation.tolist() == [[0, 1]]


def test_a_column_group_keeps_the_columns_that_matter_to_all_its_blocks():
    # Block 0 favours columns 0, 1; block 1 favours 2, 3 more strongly: per block each keeps its own,
    # one group of both keeps the two columns of largest total weight.
    w = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.1, 2.0, 3.0], [0.0, 0.1, 2.0, 3.0]])
    per_block, _ = choose_blocks(w, 2, 2, 2, None)
    grouped, rows = choose_blocks(w, 2, 2, 1, None, group=4)
    assert per_block.tolist() == [[0, 1], [2, 3]]
    assert grouped.tolist() == [[2, 3]] and rows.shape == (2, 1)


@pytest.mark.parametrize(
    "assignments, fragment",
    [
        ({"col_keep": "0"}, "col_keep=0.0: keep rates must be in (0, 1]"),
        ({"row_keep": "1.5"}, "row_keep=1.5: keep rates must be in (0, 1]"),
        ({"override": "fc:col_keep=-1"}, "col_keep=-1.0: keep rates must be in (0, 1]"),
        ({"override": "fc:colkeep=0.5"}, "unknown key 'colkeep'"),
        ({"override": "fc"}, "expected PATTERN:KEY=V"),
        ({"block": "-1"}, "block=-1: must be an integer >= 1 (or 0: one block of all rows)"),
        ({"col_group": "-2"}, "col_group=-2: must be an integer >= 1 (a multiple of block, or 0: the whole layer)"),
    ],
)
def test_bad_options_name_the_problem(assignments, fragment):
    with pytest.raises(OptionError) as e:
        build_options("bcr", Bcr.Options, assignments)
    assert fragment in str(e.value)


def test_block_zero_is_one_block_per_layer_and_a_plain_matmul():
    model, p, result = apply("mlp", block=0, col_keep=0.25, row_keep=1.0)
    assert [s.structure.blocks for s in p.structures.values()] == [1, 1, 1]
    assert not any(op.name == "linalg.batch_matmul" for op in p.ops())  # one block: no batch dim
    assert p.layer_stats()["0.weight"].macs == 4 * 64 * 512
    check = verify(model.module, result.reference_weights, compiled_outputs(p), p.example_inputs)
    assert check.compile_error.max_rel <= 1e-5, check


def test_block_that_does_not_fit_a_named_layer_is_an_error():
    with pytest.raises(OptionError) as e:
        apply("mlp", block=16, layers="0.weight,4.weight")  # 4.weight has 10 rows
    assert "block=16 does not fit layer 4.weight (10 output rows)" in str(e.value)
    assert "bcr.skip=4.weight" in str(e.value)


def test_col_group_that_is_not_a_multiple_of_the_block_is_an_error_for_a_named_layer():
    with pytest.raises(OptionError) as e:
        apply("mlp", block=4, col_group=6, layers="0.weight")
    assert "col_group=6 does not fit layer 0.weight (512 output rows, block 4)" in str(e.value)


def test_block_that_does_not_fit_an_unnamed_layer_skips_it_with_the_reason():
    from optc.api import SkipReason

    _, p, result = apply("mlp", block=16)  # 4.weight has 10 rows
    changes = {c.layer: c for c in result.changes}
    assert changes["0.weight"].changed and changes["2.weight"].changed
    assert not changes["4.weight"].changed and changes["4.weight"].reason is SkipReason.DOES_NOT_FIT
    assert "block=16 does not fit layer 4.weight (10 output rows)" in changes["4.weight"].action
    assert set(p.structures) == {"0.weight", "2.weight"}


def test_defaults_run_on_the_cnn_and_skip_what_bcr_cannot_prune():
    from optc.api import SkipReason

    model, p, result = apply("cnn")  # block 16: fc2 (10 rows) does not fit; dw/pw are grouped convs
    reasons = {c.layer: c.reason for c in result.changes}
    assert reasons == {"stem.weight": None, "dw.weight": SkipReason.UNSUPPORTED, "pw.weight": SkipReason.UNSUPPORTED,
                       "fc1.weight": None, "fc2.weight": SkipReason.DOES_NOT_FIT}
    check = verify(model.module, result.reference_weights, compiled_outputs(p), p.example_inputs)
    assert check.compile_error.max_rel <= 1e-5, check


def test_activation_score_without_calibration_is_an_error():
    with pytest.raises(OptionError, match="needs calibration data"):
        apply("mlp", block=2, score="activation")


def test_method_contract_with_the_testing_kit():
    from optc.testing import check_method

    check_method(Bcr(), options={"block": 4, "col_keep": 0.5}, identity={"block": 2, "col_keep": 1, "row_keep": 1})


class _Convs(torch.nn.Module):
    """A biased 3×3 stride-2 conv, a 1×1 conv and a 3×3 dilated one, on a batch of two."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(8, 32, 3, stride=2, padding=1)
        self.b = torch.nn.Conv2d(32, 32, 1, bias=False)
        self.c = torch.nn.Conv2d(32, 16, 3, padding=2, dilation=2)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _convs():
    from optc.load import Model
    from optc.lower import lower

    model = Model(_Convs().eval(), (torch.randn(2, 8, 15, 13),), "convs")
    return model, lower(model)


CONV_CHECKS = """
// CHECK-LABEL: func.func @main
// the kept columns' im2col, pixels innermost (batch 2 of 8x7 pixels), then (rows x kept columns) . (kept columns x pixels)
// CHECK: linalg.generic {{.*}} ins(%{{.*}} : tensor<8xf32>) outs(%{{.*}} : tensor<1x36x2x8x7xf32>)
// CHECK: tensor.extract %{{.*}}[%{{.*}}, %{{.*}}] : tensor<1x36xi32>
// CHECK: linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<16x36xf32>, tensor<36x112xf32>) outs(%{{.*}} : tensor<16x112xf32>)
// the kept rows' pixel runs into the NCHW output
// CHECK: linalg.generic {{.*}} ins(%{{.*}} : tensor<8xf32>) outs(%{{.*}} : tensor<2x32x8x7xf32>)
// CHECK: tensor.extract %{{.*}}[%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}] : tensor<1x16x2x8x7xf32>
"""


@pytest.mark.parametrize("col_group", [0, 8])
def test_pruned_convs_keep_pixels_innermost_and_match_the_pruned_reference(tmp_path, col_group):
    model, p = _convs()
    options = build_options("bcr", Bcr.Options, {"block": "8", "col_keep": "0.5", "row_keep": "0.5", "col_group": str(col_group)})
    result = Bcr().apply(p, options, MethodContext())
    p.verify()
    assert len([c for c in result.changes if c.action.startswith("pruned")]) == 3
    check = verify(model.module, result.reference_weights, compiled_outputs(p), p.example_inputs)
    assert check.compile_error.max_rel <= 1e-5, check
    assert check.compression_error.max_rel > 1e-3
    if col_group == 0:  # a.weight: 32 rows in blocks of 8 keeping 4, 8·3·3 = 72 columns keeping 36
        filecheck(tmp_path, CONV_CHECKS, p.to_text())
