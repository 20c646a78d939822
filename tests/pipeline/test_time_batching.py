"""Time batching: the input projections of a stepped RNN become one matmul per
weight, exactly; recurrent weights and single-op projections are left alone."""

import numpy as np
import pytest
import torch
from torch import nn

from optc.api import MethodContext, SkipReason, Status
from optc.load import Model
from optc.lower import lower
from optc.plugins.lowrank import LowRank, LowRankOptions
from optc.testing import compiled_outputs
from optc.time_batching import time_batch
from optc.verify import compare, eager_outputs, verify
from tests.conftest import filecheck, lowered

EXACT = 1e-5


def batched(name):
    model, p = lowered(name)
    before = p.layer_stats()
    result = time_batch(p)
    return model, p, before, result


@pytest.mark.parametrize("name", ["lstm_cells", "gru_cells"])
def test_stepped_rnn_input_projection_becomes_one_matmul_and_stays_exact(name):
    model, p, before, result = batched(name)
    changes = {c.layer: c for c in result.changes}
    assert changes["cell.weight_ih"].status == Status.CHANGED
    assert changes["cell.weight_ih"].details["steps"] == before["cell.weight_ih"].ops == 8
    assert changes["cell.weight_hh"].status == Status.SKIPPED and "recurrent" in changes["cell.weight_hh"].action
    after = p.layer_stats()
    assert after["cell.weight_ih"].ops == 1 and after["cell.weight_hh"].ops == 8
    assert after["cell.weight_ih"].macs == before["cell.weight_ih"].macs  # same work, one op
    err = compare(compiled_outputs(p), eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= EXACT, err


CHECKS = """
// The step inputs are slices of the model input: the batched matmul reads it collapsed, once.
// CHECK: func.func @main(%[[X:.*]]: tensor<2x8x16xf32>)
// CHECK: %[[ROWS:.*]] = tensor.collapse_shape %[[X]] {{\\[}}[0, 1], [2]] : tensor<2x8x16xf32> into tensor<16x16xf32>
// CHECK: linalg.matmul ins(%[[ROWS]], %{{.*}} : tensor<16x16xf32>, tensor<16x128xf32>)
// CHECK-NOT: linalg.matmul ins(%{{.*}} : tensor<2x16xf32>, tensor<16x128xf32>)
// CHECK: linalg.matmul ins(%{{.*}} : tensor<2x32xf32>, tensor<32x128xf32>)
"""


def test_rewritten_ir_has_one_input_projection_matmul_per_layerfilecheck(tmp_path):
    _, p, _, _ = batched("lstm_cells")
    filecheck(tmp_path, CHECKS, p.to_text())
    assert p.to_text().count("tensor<16x128xf32>) outs") == 1  # one input-projection matmul, not 8


def test_torch_lstm_at_batch_1_arrives_batched_and_is_left_alone():
    """nn.LSTM's decomposition already projects all steps at once (one matmul per
    input weight at batch 1): nothing to batch, the hidden weights skipped as recurrent."""
    _, p, before, result = batched("lstm")
    assert all(s.ops == 1 and s.kind == "matmul" for layer, s in before.items() if "weight_ih" in layer)
    assert not any(c.changed for c in result.changes)
    assert all(c.reason == SkipReason.NOTHING_TO_DO for c in result.changes if "weight_hh" in c.layer)
    assert p.layer_stats() == before


@pytest.mark.parametrize("name", ["gru", "gru2", "bilstm"])
def test_torch_rnn_batch_matmul_over_a_broadcast_weight_becomes_one_matmul(name):
    """At batch > 1 torch lowers the first layer's input projection as a
    batch_matmul over T copies of the weight: it becomes one [T·B, in] matmul."""
    model, p, before, result = batched(name)
    shared = [layer for layer, s in before.items() if s.kind == "batch_matmul"]
    assert shared and all("weight_ih_l0" in layer for layer in shared)
    changes = {c.layer: c for c in result.changes}
    after = p.layer_stats()
    for layer in shared:
        assert changes[layer].changed and changes[layer].details["steps"] == 8
        assert after[layer].kind == "matmul" and after[layer].macs == before[layer].macs
    assert "linalg.batch_matmul" not in p.to_text()
    err = compare(compiled_outputs(p), eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= EXACT, err


class ComputedSteps(nn.Module):
    """Step inputs computed per step (not plain slices): batched by concatenation;
    the cell reads a tanh of the slice, placed inside the loop."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(8, 16)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], 16)
        for t in range(x.shape[1]):
            h = self.cell(torch.tanh(x[:, t]) * (t + 1), h)
        return h


def test_computed_step_inputs_are_hoisted_and_concatenated():
    torch.manual_seed(0)
    module = ComputedSteps().eval()
    p = lower(Model(module, (torch.randn(3, 5, 8),), "computed"))
    result = time_batch(p)
    change = next(c for c in result.changes if c.layer == "cell.weight_ih")
    assert change.changed and change.details["steps"] == 5
    assert p.layer_stats()["cell.weight_ih"].ops == 1
    assert "tensor<15x8xf32>" in p.to_text()  # 5 steps × batch 3 rows
    err = compare(compiled_outputs(p), eager_outputs(module, p.example_inputs))
    assert err.max_rel <= EXACT, err


def test_lowrank_factor_chain_is_batched_factor_by_factor():
    """After lowrank, each step is x·A·B: both factor matmuls batch (the second's
    inputs are slices of the first batched result), and it stays exact to the
    compressed reference."""
    model, p = lowered("lstm_cells")
    lr = LowRank().apply(p, LowRankOptions(rank=4, force=True), MethodContext())
    result = time_batch(p)
    change = next(c for c in result.changes if c.layer == "cell.weight_ih")
    assert change.changed and change.details == {"steps": 8, "matmuls": 2}
    assert p.layer_stats()["cell.weight_ih"].ops == 2  # one per factor, for all 8 steps
    check = verify(model.module, lr.reference_weights, compiled_outputs(p), p.example_inputs, EXACT)
    assert check.compile_error.max_rel <= EXACT, check.compile_error


def test_a_form_left_by_a_method_that_is_not_matched_is_skipped_with_the_reason():
    from optc.plugins.bcr import Bcr, BcrOptions

    model, p = lowered("lstm_cells")
    br = Bcr().apply(p, BcrOptions(block=32, col_keep=0.5, row_keep=0.5, col_group=32, layers=("cell.weight_ih",)), MethodContext())  # per-block columns: a batch_matmul
    result = time_batch(p)
    change = next(c for c in result.changes if c.layer == "cell.weight_ih")
    assert change.reason == SkipReason.UNSUPPORTED and "batch_matmul" in change.action
    check = verify(model.module, br.reference_weights, compiled_outputs(p), p.example_inputs, EXACT)
    assert check.compile_error.max_rel <= EXACT, check.compile_error
    np.testing.assert_equal(p.layer_stats()["cell.weight_ih"].ops, 8)


def test_compile_runs_the_pass_after_the_methods_and_reports_it():
    from optc.driver import compile_model, select
    from optc.report import compile_report

    compiled = compile_model("examples.models:lstm_cells", select([], "cpu", {}, {}), tolerance=EXACT)
    report = compile_report(compiled, None)
    (section,) = report["passes"]
    assert section["name"] == "time_batching"
    rows = {c["layer"]: c for c in section["changes"]}
    assert rows["cell.weight_ih"]["status"] == "changed" and rows["cell.weight_ih"]["details"]["steps"] == 8
    assert rows["cell.weight_hh"]["reason"] == "nothing_to_do"
    assert compiled.verification.passed
    off = compile_model("examples.models:lstm_cells", select([], "cpu", {}, {}), time_batching=False)
    assert off.passes == [] and off.program.layer_stats()["cell.weight_ih"].ops == 8
