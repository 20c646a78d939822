"""Shared structures: masks as numpy and torch agree, compact forms hold exactly
the kept weights, and MAC/byte costs equal hand counts."""

import numpy as np
import pytest

from optc.structures import NM, BlockColumnRow, ChannelSubset, LowRankFactors, Unstructured

RNG = np.random.default_rng(0)
W = RNG.normal(size=(8, 12)).astype(np.float32)


def test_block_column_row_mask_compact_and_costs():
    cols = np.array([[0, 3, 5], [1, 2, 11]])  # 2 blocks of 4 rows, 3 columns each
    rows = np.array([[0, 2], [1, 3]])
    s = BlockColumnRow((8, 12), 4, cols, rows)
    m = s.mask()
    assert m.sum() == 2 * 3 * 2 and m[0, [0, 3, 5]].all() and not m[1].any() and m[5, [1, 2, 11]].all()
    compact = s.compact(W)
    assert compact.shape == (2, 3, 2)  # nb × kc × rb
    np.testing.assert_array_equal(compact[1], W[np.ix_([5, 7], [1, 2, 11])].T)
    assert s.macs(rows=4) == 2 * 3 * 2 * 4
    assert s.nbytes() == 12 * 4 + cols.size * 4 + 2 * 8 * 4  # values, kept columns, block and position per row
    np.testing.assert_array_equal(s.apply(W), np.where(m, W, 0))


def test_block_column_row_column_groups_share_columns_and_store_one_matrix_per_group():
    cols = np.array([[0, 3, 5], [1, 2, 11]])  # 4 blocks of 2 rows in 2 column groups of 2 blocks
    rows = np.array([[0], [1], [1], [0]])
    s = BlockColumnRow((8, 12), 2, cols, rows)
    assert s.groups == 2 and s.block_cols(1).tolist() == [0, 3, 5] and s.block_cols(2).tolist() == [1, 2, 11]
    m = s.mask()
    assert m.sum() == 4 * 3 and m[0, [0, 3, 5]].all() and m[3, [0, 3, 5]].all() and m[5, [1, 2, 11]].all() and m[6, [1, 2, 11]].all()
    compact = s.compact(W)
    assert compact.shape == (2, 3, 2)  # groups × kc × (blocks per group · rb)
    np.testing.assert_array_equal(compact[1], W[np.ix_([5, 6], [1, 2, 11])].T)
    one = BlockColumnRow((8, 12), 2, cols[:1], rows)  # one group: a plain kc × (nb·rb) matrix
    np.testing.assert_array_equal(one.compact(W), W[np.ix_([0, 3, 5, 6], [0, 3, 5])].T)
    assert not one.shared and one.macs() == 4 * 3 and one.nbytes() == 12 * 4 + 3 * 4 + 2 * 8 * 4
    np.testing.assert_array_equal(s.apply(W), np.where(m, W, 0))


def test_unstructured_and_nm_keep_what_they_say():
    u = Unstructured.largest(W, 0.25)
    assert u.mask().sum() == 24 and np.abs(W[u.mask()]).min() >= np.abs(W[~u.mask()]).max()
    assert u.macs() == 24 and u.nbytes() == 24 * (4 + 4) + 9 * 4  # CSR: values, column indices, row pointers
    nm = NM.largest(W, 2, 4)
    assert (nm.mask().reshape(8, 3, 4).sum(axis=2) == 2).all()
    assert nm.macs(rows=2) == 8 * 6 * 2 and nm.nbytes() == 48 * 4 + 48 * 2 // 8  # 2-bit positions
    with pytest.raises(ValueError, match="m=5 do not fit 12 inputs"):
        NM.largest(W, 2, 5)


def test_channel_subset_keeps_whole_channels():
    s = ChannelSubset((8, 12), np.array([1, 6]), np.array([0, 2]), group=3)  # 4 input channels of 3 columns
    assert s.columns().tolist() == [0, 1, 2, 6, 7, 8]
    np.testing.assert_array_equal(s.compact(W), W[np.ix_([1, 6], [0, 1, 2, 6, 7, 8])])
    assert s.mask().sum() == 12 and s.macs() == 12 and s.nbytes(2) == 24


def test_low_rank_factors_and_torch_views():
    u, v = RNG.normal(size=(8, 2)).astype(np.float32), RNG.normal(size=(2, 12)).astype(np.float32)
    s = LowRankFactors(u, v)
    assert s.shape == (8, 12) and s.rank == 2 and np.linalg.matrix_rank(s.matrix()) == 2
    assert s.macs(rows=3) == 2 * 20 * 3 and s.nbytes() == 2 * 20 * 4
    tu, tv = s.factors_torch()
    np.testing.assert_array_equal((tu @ tv).numpy(), u @ v)


@pytest.mark.parametrize("structure", [
    BlockColumnRow((8, 12), 4, np.array([[0, 1], [2, 3]]), np.array([[0], [3]])),
    Unstructured(W > 0),
    NM.largest(W, 1, 4),
    ChannelSubset((8, 12), np.array([0]), np.array([1, 2]), group=2),
])
def test_masks_as_numpy_and_torch_agree(structure):
    import torch

    t = structure.mask_torch()
    assert t.dtype == torch.bool and t.shape == (8, 12)
    np.testing.assert_array_equal(t.numpy(), structure.mask())
    assert structure.density() == structure.mask().mean()


def test_kernel_basis_maps_inputs_and_counts_the_basis_first_cost():
    from optc.structures import KernelBasis

    rng = np.random.default_rng(0)
    bases = np.linalg.qr(rng.normal(size=(9, 2)))[0].T  # 2 orthonormal 3×3 bases
    keep = np.ones((4, 3 * 2), dtype=bool)
    keep[:, 1] = False  # input channel 0's second basis map is read by no coefficient
    s = KernelBasis(bases, keep)
    t = s.input_map()
    assert t.shape == (3 * 9, 3 * 2)
    coef = rng.normal(size=(4, 6))
    w = coef @ t.T  # kernel W[o, i] = Σ_b C[o, i, b]·B[b]
    np.testing.assert_allclose(w.reshape(4, 3, 9)[1, 2], coef[1, 4] * bases[0] + coef[1, 5] * bases[1])
    assert s.maps().tolist() == [[0, 2, 3, 4, 5]]
    assert s.macs(10) == 10 * (5 * 9 + 4 * 5)
    grouped = KernelBasis(bases, np.ones((4, 2 * 2), dtype=bool), groups=2)  # 2 groups of 2 input channels
    assert grouped.maps().shape == (2, 4) and grouped.macs() == 2 * 4 * 9 + 4 * 4
