"""Per-channel quantization: levels within ±qmax, the max of each row on the
top level, and int4 packing that round-trips."""

import numpy as np
import pytest

from optc.storage import pack_int4, unpack_int4
from optc.storage import QMAX, quantize


@pytest.mark.parametrize("bits", [8, 4])
def test_levels_and_scales(bits):
    w = np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32)
    w[3] = 0.0  # an all-zero channel keeps scale 1 and zero levels
    q = quantize(w, bits)
    assert q.levels.dtype == np.int8
    assert q.levels.min() >= -QMAX[bits] and q.levels.max() <= QMAX[bits]
    assert (np.abs(q.levels[[0, 1, 2, 4, 5]]).max(axis=1) == QMAX[bits]).all()
    assert q.scales[3] == 1.0 and not q.levels[3].any()
    assert np.abs(q.dequantized() - w).max() <= q.scales.max() / 2 + 1e-6  # rounding to the nearest level


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_int4_packing_round_trips(axis):
    levels = np.random.default_rng(1).integers(-8, 8, size=(4, 6, 8)).astype(np.int8)
    packed = pack_int4(levels, axis)
    assert packed.dtype == np.uint8 and packed.nbytes == levels.size // 2
    unpacked = unpack_int4(packed, axis)  # axis split into (n/2, 2)
    shape = list(levels.shape)
    assert np.array_equal(unpacked.reshape(shape), levels)


def _mlp():
    from tests.conftest import lowered

    return lowered("mlp")


@pytest.mark.parametrize("bits", [8, 4])
def test_store_quantized_weights_traces_through_the_typed_dequantize(bits):
    from torch_mlir import ir

    from optc.storage import DEQUANT_ATTR, store
    from optc.testing import compiled_outputs
    from optc.verify import verify

    model, p = _mlp()
    refs = {}
    for layer in p.layers():
        q = quantize(layer.matrix(), bits)
        refs[layer.name] = layer.from_matrix(q.dequantized())
        stored = store(p, layer.param, q, name=f"{layer.name}.q", origin=layer.name, layout=layer.layout())
        assert stored.storage == ("int8" if bits == 8 else "int4 (two per byte)")
    gens = [op for op in p.ops() if op.name == "linalg.generic" and DEQUANT_ATTR in op.attributes]
    assert len(gens) == 3
    meaning = ir.DictAttr(gens[0].attributes[DEQUANT_ATTR])  # typed, not a string to parse
    assert ir.IntegerAttr(meaning["bits"]).value == bits
    assert set(p.layer_stats()) == {"0.weight", "2.weight", "4.weight"}  # still traced to their layers
    assert p.has_narrow_weights()
    check = verify(model.module, refs, compiled_outputs(p), p.example_inputs)
    assert check.compile_error.max_rel <= 1e-5, check


def test_float16_storage_counts_as_narrow():
    import numpy as np

    from optc.storage import IDENTITY, narrow_kinds, store

    _, p = _mlp()
    assert not p.has_narrow_weights()
    w = p.params["0.weight"]
    stored = store(p, "0.weight", w, name="0.weight.half", origin="0.weight", layout=IDENTITY, dtype=np.float16)
    assert stored.storage == "float16" and p.params[stored.param].dtype == np.float16
    assert p.has_narrow_weights() and narrow_kinds(p) == {"f16"}  # so IREE keeps the halves (no const-eval)
    assert "0.weight" in p.layer_stats()


def test_layout_channels_find_the_output_channel_dims():
    import numpy as np

    from optc.storage import Layout
    from optc.structures import BlockColumnRow

    s = BlockColumnRow((8, 6), 4, np.array([[0, 1], [2, 3]]), np.array([[0, 2], [1, 3]]))
    dims, rows = Layout(s.compact).channels(8, 6)
    assert dims == [0, 2] and rows.tolist() == [[0, 2], [5, 7]]
    dims, rows = Layout(lambda m: m.T).channels(8, 6)  # a transposed parameter
    assert dims == [1] and rows.tolist() == list(range(8))
