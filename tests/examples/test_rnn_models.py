"""GRU, multi-layer and bidirectional LSTMs (examples/models.py) lower, verify
against PyTorch and compress with lowrank and bcr like the single-layer LSTM."""

import pytest

from optc.api import MethodContext, Status
from optc.plugins.bcr import Bcr, BcrOptions
from optc.plugins.lowrank import LowRank, LowRankOptions
from optc.testing import compiled_outputs
from optc.time_batching import time_batch
from optc.verify import compare, eager_outputs, verify
from tests.conftest import lowered

RNNS = ["gru", "gru2", "bilstm"]


@pytest.mark.parametrize("name", RNNS)
def test_lowrank_at_full_rank_is_exact(name):
    model, p = lowered(name)
    result = LowRank().apply(p, LowRankOptions(rank=10_000, force=True), MethodContext())
    changed = {c.layer for c in result.changes if c.status == Status.CHANGED}
    assert {layer for layer in p.layer_stats()} <= changed | {"fc.weight"} and any("weight_hh" in layer for layer in changed)
    time_batch(p)
    err = compare(compiled_outputs(p), eager_outputs(model.module, p.example_inputs))
    assert err.max_rel <= 1e-5, err


@pytest.mark.parametrize("name", RNNS)
def test_bcr_compresses_every_gate_weight_and_the_artifact_matches_the_reference(name):
    model, p = lowered(name)
    before = p.layer_stats()
    result = Bcr().apply(p, BcrOptions(block=16, col_keep=0.5, row_keep=1.0), MethodContext())
    gates = [layer for layer in before if "weight_" in layer and layer.startswith(("gru.", "lstm."))]
    changed = {c.layer for c in result.changes if c.status == Status.CHANGED}
    assert set(gates) <= changed
    after = p.layer_stats()
    assert all(after[g].macs < before[g].macs for g in gates)
    time_batch(p)
    check = verify(model.module, result.reference_weights, compiled_outputs(p), p.example_inputs, 1e-4)
    assert check.compile_error.max_rel <= 1e-4, check.compile_error
