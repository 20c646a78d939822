"""partition: K independent block-diagonal partitions, one batch_matmul of K matmuls."""

import numpy as np
import pytest

from optc.api import MethodContext, SkipReason, build_options
from optc.errors import OptionError
from optc.plugins.partition import BlockDiagonal, Partition, choose_partitions
from optc.testing import check_artifact, check_method, check_report, run_method
from tests.conftest import filecheck, lowered


def apply(name, **opts):
    model, p = lowered(name)
    result = Partition().apply(p, build_options("partition", Partition.Options, {k: str(v) for k, v in opts.items()}), MethodContext())
    p.verify()
    return model, p, result


def test_method_contract_with_the_testing_kit():
    # parts=1 keeps every weight: the kit checks the compiled program reproduces the model to 1e-5
    check_method(Partition(), options={"parts": 2}, identity={"parts": 1})


CHECKS = """
// CHECK-LABEL: func.func @main
// CHECK: linalg.generic
// CHECK-SAME: ins(%{{.*}} : tensor<256xi32>) outs(%{{.*}} : tensor<4x256xf32>)
// CHECK: linalg.transpose ins(%{{.*}} : tensor<4x4x64xf32>) outs(%{{.*}} : tensor<4x4x64xf32>) permutation = [1, 0, 2]
// CHECK: linalg.batch_matmul ins(%{{.*}}, %{{.*}} : tensor<4x4x64xf32>, tensor<4x64x128xf32>) outs(%{{.*}} : tensor<4x4x128xf32>)
// CHECK-NOT: linalg.matmul
// CHECK: linalg.transpose ins(%{{.*}} : tensor<4x4x128xf32>)
// CHECK: linalg.generic
// CHECK-SAME: ins(%{{.*}} : tensor<512xi32>) outs(%{{.*}} : tensor<4x512xf32>)
// CHECK: linalg.matmul
// CHECK-NOT: dense_resource<"0.weight">
"""


def test_partitioned_ir_holds_k_independent_matmuls(tmp_path):
    _, p, _ = apply("mlp", parts=4, layers="0.weight")  # 256 -> 512 as 4 partitions of 64 -> 128
    filecheck(tmp_path, CHECKS, p.to_text())


def test_a_planted_block_diagonal_matrix_is_found():
    rng = np.random.default_rng(0)
    parts, n, k = 4, 32, 16
    blocks = np.zeros((n, k))
    for p in range(parts):
        blocks[p * 8:(p + 1) * 8, p * 4:(p + 1) * 4] = rng.normal(size=(8, 4)) + 3
    rows_perm, cols_perm = rng.permutation(n), rng.permutation(k)
    w = blocks[rows_perm][:, cols_perm] + 0.01 * rng.normal(size=(n, k))
    rows, cols = choose_partitions(w**2, parts)
    s = BlockDiagonal((n, k), rows, cols)
    planted = (blocks != 0)[rows_perm][:, cols_perm]
    assert np.array_equal(s.mask(), planted)


def test_kept_weights_are_block_diagonal_and_the_artifact_matches():
    run = run_method(Partition(), {"parts": 4, "skip": "4.weight"}, "mlp")
    check_report(run)
    check_artifact(run)
    for layer in ("0.weight", "2.weight"):
        s = run.program.structures[layer].structure
        ref = run.result.reference_weights[layer]
        assert s.parts == 4 and np.all(ref[~s.mask()] == 0)
        assert s.mask().sum() == ref.size // 4  # each row keeps in/K inputs


def test_parts_that_do_not_fit_skip_an_unnamed_layer_with_the_reason():
    _, _, result = apply("mlp", parts=4)  # the last layer has 10 outputs
    change = {c.layer: c for c in result.changes}["4.weight"]
    assert change.reason is SkipReason.DOES_NOT_FIT and "parts=4 does not divide layer 4.weight (10 outputs × 256 inputs)" in change.action


def test_parts_that_do_not_fit_a_named_layer_is_an_error():
    with pytest.raises(OptionError, match="parts=4 does not divide layer 4.weight"):
        apply("mlp", parts=4, layers="4.weight")


def test_a_named_convolution_is_an_error_an_unnamed_one_is_skipped():
    with pytest.raises(OptionError, match="cannot split layer stem.weight: conv2d"):
        apply("cnn", parts=2, layers="stem.weight")
    _, _, result = apply("cnn", parts=2)
    assert {c.layer: c.reason for c in result.changes}["stem.weight"] is SkipReason.UNSUPPORTED


@pytest.mark.parametrize("assignments, fragment", [({"parts": "0"}, "parts=0"), ({"score": "best"}, "allowed values")])
def test_bad_options_name_the_problem(assignments, fragment):
    with pytest.raises(OptionError, match=fragment):
        build_options("partition", Partition.Options, assignments)


def test_admm_resolves_the_weights_inside_the_partitions():
    from optc.plugins.admm import Admm

    def partition_first(program, ctx):
        Partition().apply(program, build_options("partition", Partition.Options, {"parts": "2", "skip": "4.weight"}), ctx)

    run = run_method(Admm(), {"prune": "structure", "iterations": 5}, "mlp", before=partition_first)
    check_artifact(run)
    changed = {c.layer for c in run.result.changes if c.changed}
    assert changed == {"0.weight", "2.weight"}
    for layer in changed:
        mask = run.program.structures[layer].mask()
        ref = run.result.reference_weights[layer]
        assert np.all(ref[~mask] == 0) and np.count_nonzero(ref) > 0.9 * mask.sum()
