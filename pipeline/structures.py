"""Weight structures that methods impose and share: which weights of an out×in
matrix are kept (a mask) or how it is factored, and what computing with it costs.

Every structure gives its mask as numpy (``mask()``) and as a torch tensor
(``mask_torch()``), so a later fine-tuning stage can train inside it, and its
cost: ``macs(rows)`` multiply-accumulates for ``rows`` input rows when computed
in its compact form, and ``nbytes(itemsize)`` for the stored values plus the
index tables that form needs. Matrices are out×in (``Layer.matrix()``): rows
are output channels, columns the inputs (a convolution's C·KH·KW).

    BlockColumnRow   bcr: per block of rows, the same number of whole columns and rows
    Unstructured     any mask (stored as values + column indices + row pointers)
    NM               n of every m consecutive inputs kept (2:4 …)
    ChannelSubset    whole output channels and/or input channels kept
    LowRankFactors   W ≈ U·V of rank r (the structured matrix is U, reading x·Vᵀ)
    KernelBasis      penni: each KH×KW kernel a sparse combination of a few basis kernels
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

INDEX_BYTES = 4  # int32 index tables


def as_torch(array: np.ndarray) -> Any:
    """A torch tensor sharing nothing with ``array`` (torch is imported lazily)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(array).copy())


class Structure:
    """What every structure answers. Subclasses set ``shape`` (out, in)."""

    shape: tuple[int, int]

    def mask(self) -> np.ndarray:
        """Boolean out×in: which weights the structure keeps."""
        raise NotImplementedError

    def mask_torch(self) -> Any:
        return as_torch(self.mask())

    def apply(self, matrix: np.ndarray) -> np.ndarray:
        """``matrix`` with the weights outside the structure set to zero."""
        return np.where(self.mask(), matrix, 0).astype(matrix.dtype)

    def density(self) -> float:
        return float(self.mask().mean())

    def macs(self, rows: int = 1) -> int:
        """Multiply-accumulates for ``rows`` input rows, computed in compact form."""
        return int(self.mask().sum()) * rows

    def nbytes(self, itemsize: int = 4) -> int:
        """Bytes of the kept values plus the index tables of the compact form."""
        raise NotImplementedError

    def input_map(self) -> np.ndarray | None:
        """None when the structured matrix reads the layer's own inputs; else the
        matrix T (layer inputs × structured columns) with structured inputs xᵀ·T,
        so the layer computes with the effective weight ``matrix · Tᵀ`` and a
        solver's Gram matrix over them is Tᵀ·G·T."""
        return None


@dataclass
class BlockColumnRow(Structure):
    """bcr's structure (GRIM). Rows are cut into blocks of ``block``; ``cols[g]``
    are the kept columns of column group g — ``len(cols)`` groups of consecutive
    blocks share one column set (one group per block is GRIM's finest form) —
    ``rows[b]`` the kept rows inside block b (0..block-1), both sorted.
    The compact weight is kc×(nb·rb) with one group (in×(nb·rb) when every
    column is kept), else groups×kc×(blocks per group·rb)."""

    shape: tuple[int, int]
    block: int
    cols: np.ndarray
    rows: np.ndarray

    @property
    def shared(self) -> bool:
        """One column set, and it is every column: no gather at all."""
        return self.groups == 1 and self.cols.shape[1] == self.shape[1]

    @property
    def keeps_all_rows(self) -> bool:
        return self.rows.shape[1] == self.block

    @property
    def blocks(self) -> int:
        return self.shape[0] // self.block

    @property
    def groups(self) -> int:
        return len(self.cols)

    @property
    def group_channels(self) -> int:
        """Compact output channels per column group (its blocks' kept rows side by side)."""
        return self.blocks // self.groups * self.rows.shape[1]

    def block_cols(self, b: int) -> np.ndarray:
        return self.cols[b // (self.blocks // self.groups)]

    def out_rows(self) -> np.ndarray:
        """nb×rb: the matrix row of every compact output channel."""
        return self.rows + self.block * np.arange(self.blocks)[:, None]

    def mask(self) -> np.ndarray:
        m = np.zeros(self.shape, dtype=bool)
        out = self.out_rows()
        for b in range(self.blocks):
            m[np.ix_(out[b], self.block_cols(b))] = True
        return m

    def compact(self, matrix: np.ndarray) -> np.ndarray:
        """The kept weights as the rewritten program stores them."""
        out = self.out_rows().reshape(self.groups, -1)  # a group's output rows, block after block
        per_group = np.stack([matrix[np.ix_(out[g], self.cols[g])].T for g in range(self.groups)])
        return np.ascontiguousarray(per_group[0]) if self.groups == 1 else per_group

    def macs(self, rows: int = 1) -> int:
        return self.blocks * self.cols.shape[1] * self.rows.shape[1] * rows

    def nbytes(self, itemsize: int = 4) -> int:
        # values, the kept columns per group (none when shared), a block and a position per output row
        return self.macs() * itemsize + (0 if self.shared else self.cols.size * INDEX_BYTES) + 2 * self.shape[0] * INDEX_BYTES


@dataclass
class Unstructured(Structure):
    """Any mask, costed as compressed sparse rows."""

    keep: np.ndarray  # bool out×in

    @property
    def shape(self) -> tuple[int, int]:  # type: ignore[override]
        return tuple(self.keep.shape)

    @classmethod
    def largest(cls, matrix: np.ndarray, density: float) -> "Unstructured":
        """The ``density`` fraction of weights with the largest magnitude."""
        return cls(unstructured_mask(matrix, density))

    def mask(self) -> np.ndarray:
        return self.keep

    def nbytes(self, itemsize: int = 4) -> int:
        nnz = int(self.keep.sum())
        return nnz * (itemsize + INDEX_BYTES) + (self.shape[0] + 1) * INDEX_BYTES


@dataclass
class NM(Structure):
    """``n`` of every ``m`` consecutive inputs kept in each row."""

    n: int
    m: int
    keep: np.ndarray  # bool out×in

    @property
    def shape(self) -> tuple[int, int]:  # type: ignore[override]
        return tuple(self.keep.shape)

    @classmethod
    def largest(cls, matrix: np.ndarray, n: int, m: int) -> "NM":
        if matrix.shape[1] % m:
            raise ValueError(f"N:M groups of m={m} do not fit {matrix.shape[1]} inputs")
        return cls(n, m, nm_mask(matrix, n, m))

    def mask(self) -> np.ndarray:
        return self.keep

    def nbytes(self, itemsize: int = 4) -> int:
        kept = int(self.keep.sum())
        return kept * itemsize + math.ceil(kept * math.ceil(math.log2(self.m)) / 8)  # ⌈log2 m⌉-bit position per value


@dataclass
class ChannelSubset(Structure):
    """Whole output channels (rows) and input channels kept; an input channel
    spans ``group`` consecutive columns (a convolution's KH·KW)."""

    shape: tuple[int, int]
    out_channels: np.ndarray  # kept rows, sorted
    in_channels: np.ndarray  # kept input channels, sorted
    group: int = 1

    def columns(self) -> np.ndarray:
        return (self.in_channels[:, None] * self.group + np.arange(self.group)).reshape(-1)

    def mask(self) -> np.ndarray:
        m = np.zeros(self.shape, dtype=bool)
        m[np.ix_(self.out_channels, self.columns())] = True
        return m

    def compact(self, matrix: np.ndarray) -> np.ndarray:
        return matrix[np.ix_(self.out_channels, self.columns())]

    def macs(self, rows: int = 1) -> int:
        return len(self.out_channels) * len(self.in_channels) * self.group * rows

    def nbytes(self, itemsize: int = 4) -> int:
        return self.macs() * itemsize  # a smaller dense weight: no index tables


@dataclass
class LowRankFactors(Structure):
    """W ≈ U·V with U out×r and V r×in, computed as (x·Vᵀ)·Uᵀ. The structured
    matrix is U: it reads the inputs through V (``input_map`` = Vᵀ), as penni's
    coefficients read its basis maps, so a later solver (admm) re-solves and
    quantizes U on the inputs V produces. ``shape`` is W's (out, in)."""

    u: np.ndarray
    v: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:  # type: ignore[override]
        return (self.u.shape[0], self.v.shape[1])

    @property
    def rank(self) -> int:
        return self.u.shape[1]

    def mask(self) -> np.ndarray:
        return np.ones(self.u.shape, dtype=bool)  # every entry of U (out×r) is kept

    def input_map(self) -> np.ndarray:
        return self.v.T.astype(np.float64)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.u, self.v

    def factors_torch(self) -> tuple[Any, Any]:
        return as_torch(self.u), as_torch(self.v)

    def matrix(self) -> np.ndarray:
        return (self.u.astype(np.float64) @ self.v.astype(np.float64)).astype(self.u.dtype)

    def macs(self, rows: int = 1) -> int:
        return self.rank * sum(self.shape) * rows

    def nbytes(self, itemsize: int = 4) -> int:
        return self.rank * sum(self.shape) * itemsize


@dataclass
class KernelBasis(Structure):
    """penni's structure (PENNI, ESCALATE): every KH×KW kernel of a convolution
    with ``groups`` groups of ``in_channels`` inputs each is W[o, i] = Σ_b C[o, i, b]·B[b]
    over nb shared basis kernels B (nb × KH·KW). The structured matrix is the
    coefficients C, out × (in_channels·nb) (column i·nb + b), ``keep`` its kept
    entries; the program convolves each input channel with the bases once
    (``maps``: the input-channel·nb + basis columns some coefficient uses) and
    applies C as a 1×1 convolution."""

    bases: np.ndarray  # nb × KH·KW
    keep: np.ndarray  # bool out × (in_channels·nb)
    groups: int = 1

    @property
    def shape(self) -> tuple[int, int]:  # type: ignore[override]
        return tuple(self.keep.shape)

    @property
    def in_channels(self) -> int:
        """Input channels per group."""
        return self.keep.shape[1] // len(self.bases)

    def mask(self) -> np.ndarray:
        return self.keep

    def input_map(self) -> np.ndarray:
        return np.kron(np.eye(self.in_channels), self.bases.T.astype(np.float64))

    def maps(self) -> np.ndarray:
        """Per group, the basis maps (column indices) the coefficients use, as a
        groups × kept array (all columns unless a whole column is pruned; grouped
        layers keep every map so that groups stay equal)."""
        out = self.keep.shape[0]
        per_group = self.keep.reshape(self.groups, out // self.groups, -1).any(axis=1)
        if self.groups == 1:
            return np.flatnonzero(per_group[0])[None, :]
        return np.broadcast_to(np.arange(self.keep.shape[1]), (self.groups, self.keep.shape[1]))

    def macs(self, rows: int = 1) -> int:
        """Basis convolutions of the used maps plus the dense 1×1 coefficient conv over them (per output pixel)."""
        maps = self.maps()
        kk = self.bases.shape[1]
        return (maps.size * kk + self.keep.shape[0] * maps.shape[1]) * rows

    def nbytes(self, itemsize: int = 4) -> int:
        maps = self.maps()
        index = 0 if maps.shape[1] == self.keep.shape[1] else maps.size * INDEX_BYTES
        return (self.bases.size + self.keep.shape[0] * maps.shape[1]) * itemsize + index


def unstructured_mask(v: np.ndarray, density: float) -> np.ndarray:
    """The ``density`` fraction of entries of largest magnitude (at least one)."""
    keep = max(1, round(density * v.size))
    flat = np.abs(v).ravel()
    mask = np.zeros(v.size, dtype=bool)
    mask[np.argpartition(-flat, keep - 1)[:keep]] = True
    return mask.reshape(v.shape)


def nm_mask(v: np.ndarray, n: int, m: int) -> np.ndarray:
    """Per row, the ``n`` largest-magnitude entries of every ``m`` consecutive ones."""
    rows, k = v.shape
    groups = np.abs(v).reshape(rows, k // m, m)
    order = np.argsort(-groups, axis=2, kind="stable")[:, :, :n]
    mask = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(mask, order, True, axis=2)
    return mask.reshape(rows, k)
