"""The --dynamic-batch module: batch variants with shared weights behind a
dispatcher that runs any batch size in chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optc.driver import _host_runner
from optc.dynamic_batch import BATCH_SIZES, check_chunks, dispatcher, is_batch_dispatch, lower_dynamic_batch, variant_at
from tests.conftest import lowered


@pytest.fixture(scope="module")
def cnn_dynamic():
    loaded, program = lowered("cnn")
    return loaded.module, program, lower_dynamic_batch(loaded, program)


def test_every_batch_size_runs_exactly(cnn_dynamic):
    model, program, dynamic = cnn_dynamic
    assert is_batch_dispatch(dynamic) and not is_batch_dispatch(program)
    assert len(dynamic.callees()) == len(BATCH_SIZES)
    run = _host_runner(dynamic)
    rest = tuple(program.example_inputs[0].shape[1:])
    for n in (1, 5, 32, 45):  # a variant; 4 + 1; one chunk of 32; 32 + 8 + 4 + 1
        x = np.random.default_rng(n).normal(size=(n,) + rest).astype(np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = run(x)[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_variants_share_the_weights(cnn_dynamic):
    _, program, dynamic = cnn_dynamic
    assert dynamic.param_bytes() == program.param_bytes()
    same = variant_at(dynamic, [x.shape for x in program.example_inputs])
    assert same is not None and same.contraction_macs() == program.contraction_macs()


def test_dispatcher_slices_each_input_and_output(cnn_dynamic):
    from torch_mlir import ir

    _, program, _ = cnn_dynamic
    with program.context, ir.Location.unknown():
        f32 = ir.F32Type.get()
        ins = [ir.RankedTensorType.get([2, 3], f32), ir.RankedTensorType.get([2, 5], ir.IntegerType.get_signless(64))]
        outs = [ir.RankedTensorType.get([2, 4], f32), ir.RankedTensorType.get([2], f32)]
    text = dispatcher("main", [(1, "v1"), (2, "v2")], ins, outs)
    assert "func.func @main(%a0: tensor<?x3xf32>, %a1: tensor<?x5xi64>) -> (tensor<?x4xf32>, tensor<?xf32>)" in text
    # each variant is called from its exact-size block (inputs cast, not copied) and from its chunk loop
    assert "cf.switch %n32 : i32, [default: ^chunks, 2: ^exact0, 1: ^exact1]" in text
    assert "%cx0_1 = tensor.cast %a1 : tensor<?x5xi64> to tensor<2x5xi64>" in text
    assert text.count("func.call @v2(") == 2 and text.count("func.call @v1(") == 2
    assert "tensor.extract_slice %a1[%i0, 0] [2, 5] [1, 1] : tensor<?x5xi64> to tensor<2x5xi64>" in text
    assert "tensor.insert_slice %y1#1 into %acc1_1[%i1] [1] [1] : tensor<1xf32> into tensor<?xf32>" in text


def test_check_chunks_sees_a_misplaced_chunk():
    def right(x):
        return [x * 2.0]

    def misplaced(x):  # every chunk of a non-variant batch written at row 0
        out = x * 2.0
        if len(x) > 1:
            out[1:] = out[0]
        return [out]

    x = np.arange(4, dtype=np.float32).reshape(1, 4) + 1
    assert check_chunks(right, [x]) == 0.0
    assert check_chunks(misplaced, [x]) > 0.5


def test_auto_driver_judges_a_dispatcher_by_its_largest_variant(cnn_dynamic):
    # 0.72 M MACs at batch 1: local-sync; its batch-32 variant does 23 M: local-task for the whole module
    from optc.targets.cpu import SYNC_MAX_MACS, auto_driver

    _, program, dynamic = cnn_dynamic
    assert program.contraction_macs() < SYNC_MAX_MACS <= max(v.contraction_macs() for v in dynamic.variants())
    assert auto_driver(program) == "local-sync" and auto_driver(dynamic) == "local-task"
