"""The program view: weighted ops with names, roles, shapes and MACs equal to hand counts."""

import numpy as np
import pytest

from optc.program import apply_view, unapply_view
from tests.conftest import lowered


def test_cnn_weighted_ops_have_fqn_names_kinds_and_hand_counted_macs():
    _, p = lowered("cnn")
    ops = {w.param: w for w in p.weighted_ops()}
    assert set(ops) == {"stem.weight", "dw.weight", "pw.weight", "fc1.weight", "fc2.weight"}
    assert ops["stem.weight"].kind == "conv2d"
    assert ops["dw.weight"].kind == "depthwise_conv2d"
    assert ops["pw.weight"].kind == "grouped_conv2d"
    assert ops["fc1.weight"].kind == "matmul"
    # conv 3->16, 3x3, 32x32 output: 16*32*32 outputs x 3*3*3 MACs each
    assert ops["stem.weight"].macs == 16 * 32 * 32 * 3 * 3 * 3
    # depthwise 16 channels, 3x3: one 3x3 window per output
    assert ops["dw.weight"].macs == 16 * 32 * 32 * 3 * 3
    # 1x1 conv with 2 groups of 8 channels: 8 inputs per output
    assert ops["pw.weight"].macs == 16 * 32 * 32 * 8
    # linear 16->64 at batch 1
    assert ops["fc1.weight"].macs == 16 * 64
    stats = p.layer_stats()
    assert stats["fc1.weight"].params == 64 * 16
    assert stats["stem.weight"].weight_shape == (16, 3, 3, 3)


def test_weight_operand_is_the_parameter_through_its_view_chain():
    _, p = lowered("cnn")
    fc1 = next(w for w in p.weighted_ops() if w.param == "fc1.weight")
    operand = apply_view(p.params["fc1.weight"], fc1.chain)
    assert operand.shape == fc1.weight_shape == (16, 64)
    np.testing.assert_array_equal(operand, p.params["fc1.weight"].T)
    back = unapply_view(operand, fc1.chain, p.params["fc1.weight"].shape)
    np.testing.assert_array_equal(back, p.params["fc1.weight"])


def test_lstm_gate_weights_are_found_at_every_time_step():
    _, p = lowered("lstm")
    uses = [w for w in p.weighted_ops() if w.param == "lstm.weight_hh_l1"]
    assert len(uses) >= 11  # 12 steps; the first step's h=0 matmul may fold away
    assert all(w.weight_shape == (64, 256) for w in uses)
    assert p.layer_stats()["lstm.weight_hh_l1"].ops == len(uses)


def test_transformer_projections_are_weighted_matmuls():
    _, p = lowered("transformer")
    names = {w.param for w in p.weighted_ops()}
    assert {"encoder.layers.0.self_attn.in_proj_weight", "encoder.layers.0.linear1.weight", "head.weight"} <= names
    # activation x activation matmuls (attention scores) count in the total but are not layers
    assert p.contraction_macs() > sum(s.macs for s in p.layer_stats().values())


def test_weights_are_named_dense_resources_in_the_ir():
    _, p = lowered("cnn")
    text = p.to_text()
    assert 'dense_resource<"stem.weight">' in text or "dense_resource<stem.weight>" in text
    assert "torch_tensor_" not in text  # no anonymous blobs for parameters


def test_constant_adds_a_named_parameter_and_unused_ones_are_dropped():
    _, p = lowered("mlp")
    before = set(p.params)
    value = p.constant("extra.weight", np.ones((3, 3), np.float32), origin="0.weight")
    assert "extra.weight" in p.params and p.layer_of("extra.weight") == "0.weight"
    assert value.owner.name == "arith.constant"
    p.erase_dead()  # nothing uses it
    assert set(p.params) == before


def test_clone_is_independent():
    _, p = lowered("mlp")
    q = p.clone()
    q.constant("only.in.clone", np.zeros((2, 2), np.float32))
    assert "only.in.clone" in q.params and "only.in.clone" not in p.params
    assert q.to_bytecode() != p.to_bytecode()


def test_clone_holds_the_same_weights_without_copying_them():
    """The copy's constants are bound to the original arrays: cloning a program
    with 1 MiB of weights allocates far less than one copy of them (the old
    bytecode round trip held the module's bytes twice)."""
    import tracemalloc

    _, p = lowered("mlp")
    weights = sum(a.nbytes for a in p.params.values())
    assert weights > 1_000_000
    tracemalloc.start()
    try:
        q = p.clone()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < weights // 4
    assert q.to_text(elide=False) == p.to_text(elide=False)  # every blob's bytes included
    assert q.module.context is not p.module.context
    assert all(q.params[n] is a for n, a in p.params.items())


def test_from_matrix_copies_a_big_weight_once_at_most():
    import tracemalloc

    _, p = lowered("mlp")
    layer = next(x for x in p.layers() if x.name == "0.weight")  # 512x256, read transposed by its matmul
    m = np.ascontiguousarray(layer.matrix())
    tracemalloc.start()
    try:
        back = layer.from_matrix(m)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(back, p.params["0.weight"])
    assert peak < 1.5 * m.nbytes


@pytest.mark.parametrize(
    "chain,shape",
    [
        ([("transpose", [1, 0])], (4, 6)),
        ([("reshape", (2, 12))], (4, 6)),
        ([("transpose", [1, 0]), ("broadcast", ([0], (5, 6, 4)))], (4, 6)),
        ([("generic_broadcast", ([1, 2], (3, 4, 6)))], (4, 6)),
    ],
)
def test_unapply_view_inverts_apply_view(chain, shape):
    a = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(unapply_view(apply_view(a, chain), chain, shape), a)


def test_every_conv_kind_has_a_matrix_view_that_round_trips():
    _, p = lowered("cnn")
    layers = {layer.name: layer for layer in p.layers()}
    assert layers["dw.weight"].groups == 16 and layers["pw.weight"].groups == 2 and layers["stem.weight"].groups == 1
    assert layers["dw.weight"].shape == (16, 9)  # C × KH·KW
    assert layers["pw.weight"].shape == (16, 8)  # O × C/G·KH·KW
    assert layers["stem.weight"].shape == (16, 27)
    for layer in layers.values():
        assert layer.problem is None
        m = layer.matrix()
        assert m.shape == layer.shape
        np.testing.assert_array_equal(layer.from_matrix(m), p.params[layer.name])
def test_clone_parses_every_dialect_torch_mlir_emits():
    """torch.sort lowers to tm_tensor.sort, which a bare ir.Context() does not know."""
    from optc.load import load_model
    from optc.lower import lower

    program = lower(load_model("tests.e2e.probe_models:sort"))
    assert "tm_tensor.sort" in program.to_text()
    copy = program.clone()
    assert "tm_tensor.sort" in copy.to_text() and copy.context is not program.context
    copy.verify()


def test_a_layer_matrix_is_a_read_only_view_of_its_weight():
    """Reading a layer's out×in matrix copies nothing (a 256 MB weight stays one
    256 MB array), and nobody can write the model's weights through it."""
    _, p = lowered("mlp")
    for layer in p.layers():
        m = layer.matrix()
        assert np.shares_memory(m, layer.weight) and not m.flags.writeable
        np.testing.assert_array_equal(m, layer.weight)  # a linear weight is out×in already
