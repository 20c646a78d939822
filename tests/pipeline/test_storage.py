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
