"""Truncated SVD for low-rank factorization, fast on big weights.

A full float64 SVD of an 8192×8192 weight took 211 s and ~6 GB; a method that
keeps r ≪ min(m, n) singular triplets needs only those. Small matrices keep the
exact float64 SVD (it costs milliseconds there); big ones use the randomized
range finder with power iterations (Halko, Martinsson & Tropp 2011, Alg. 4.4)
in float32 (on PyTorch's LAPACK, with LU-normalized power iterations). Its error ‖W − W_r‖_F is at most ~1% above the optimal one on the
hardest case, the flat spectrum of a randomly initialised layer (measured at
2048×2048, rank 256: +0.9% with 3 power iterations and r/4 oversampling; +2.4%
with 2 and 16), and closer on the decaying spectra of trained layers. Rank by
kept energy needs the spectrum's total, which is free: Σσ² = ‖W‖_F².
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXACT_MAX_ELEMENTS = 2048 * 2048  # up to here the exact float64 SVD takes well under a second
_POWER_ITERATIONS = 3


def _oversample(rank: int) -> int:
    return max(16, rank // 4)


@dataclass
class TruncatedSVD:
    """The leading singular triplets of a matrix W ≈ u · diag(s) · vt, and ‖W‖_F²."""

    u: np.ndarray  # m×r
    s: np.ndarray  # r, descending
    vt: np.ndarray  # r×n
    total_energy: float

    def energy_kept(self, rank: int) -> float:
        """Σ_{i<rank} σ_i² ÷ ‖W‖_F² (1 for a zero matrix)."""
        if self.total_energy <= 0:
            return 1.0
        return float(min(1.0, np.sum(self.s[:rank].astype(np.float64) ** 2) / self.total_energy))


def truncated_svd(matrix: np.ndarray, rank: int | None = None, energy: float | None = None, seed: int = 0) -> TruncatedSVD:
    """The top ``rank`` singular triplets of ``matrix`` or, with ``rank=None``,
    the fewest whose squared singular values hold ``energy`` (in (0, 1]) of
    ‖matrix‖_F². Exact (float64) for matrices up to ``EXACT_MAX_ELEMENTS``;
    randomized in float32 above, falling back to exact when the rank asked is
    more than half the full rank (where randomization saves nothing)."""
    if rank is None and energy is None:
        raise ValueError("truncated_svd needs a rank or an energy fraction")
    m, n = matrix.shape
    full = min(m, n)
    total = _frobenius_squared(matrix)
    if m * n <= EXACT_MAX_ELEMENTS:
        return _cut(_exact(matrix.astype(np.float64)), total, rank, energy)
    if rank is not None:
        rank = max(1, min(rank, full))
        if 2 * (rank + _oversample(rank)) > full:
            return _cut(_exact(matrix.astype(np.float32)), total, rank, None)
        return _cut(_randomized(matrix, rank, seed), total, rank, None)
    # By energy: grow the sketch until its leading values hold the energy asked.
    k = min(256, full)
    while 2 * (k + _oversample(k)) <= full:
        svd = _randomized(matrix, k, seed)
        if svd[1].astype(np.float64) @ svd[1].astype(np.float64) >= energy * total * (1 - 1e-6):
            return _cut(svd, total, None, energy)
        k *= 2
    return _cut(_exact(matrix.astype(np.float32)), total, None, energy)


def _frobenius_squared(matrix: np.ndarray) -> float:
    """‖W‖_F² accumulated in float64, a block of rows at a time (no full copy)."""
    step = max(1, (1 << 22) // max(1, matrix.shape[1]))
    return float(sum(np.square(matrix[i:i + step], dtype=np.float64).sum() for i in range(0, matrix.shape[0], step)))


def _exact(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.linalg.svd(matrix, full_matrices=False)


def _randomized(matrix: np.ndarray, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``rank`` triplets by a randomized range finder with power iterations
    (Halko et al. Alg. 4.4), all in float32 on PyTorch's LAPACK (numpy's QR ran
    ~6x slower on 4096x640). The power iterations keep the basis well scaled
    with a pivoted LU (half a QR's work; span(P·L) = span(Y), as scikit-learn's
    ``randomized_svd`` does); one QR orthonormalizes the final basis. The small
    (rank+p)×n problem B = QᵀA is solved as QR of Bᵀ then SVD of its k×k R."""
    import torch

    a = _as_tensor(np.asarray(matrix, dtype=np.float32))  # a view: no copy of the weight
    k = min(rank + _oversample(rank), min(a.shape))
    omega = torch.from_numpy(np.random.default_rng(seed).standard_normal((a.shape[1], k), dtype=np.float32))
    with torch.no_grad():
        q = omega
        for _ in range(_POWER_ITERATIONS):
            q = _lu_basis(a.T @ _lu_basis(a @ q))
        q, _ = torch.linalg.qr(a @ q)
        qb, rb = torch.linalg.qr((q.T @ a).T)  # Bᵀ = qb·rb, so B = rbᵀ·qbᵀ
        ur, s, vtr = torch.linalg.svd(rb.T)
        u, vt = q @ ur[:, :rank], vtr[:rank] @ qb.T
    return u.numpy(), s[:rank].numpy(), vt.numpy()


def _lu_basis(y: "torch.Tensor") -> "torch.Tensor":
    """P·L of the pivoted LU y = P·L·U: a basis of y's columns with entries ≤ 1."""
    import torch

    lu, pivots = torch.linalg.lu_factor(y)
    lower = torch.tril(lu[:, : y.shape[1]], -1)
    lower.diagonal().fill_(1)
    order = np.arange(y.shape[0])  # LAPACK's row swaps, applied in turn: y[order] = L·U
    for i, p in enumerate(pivots.numpy() - 1):
        order[i], order[p] = order[p], order[i]
    basis = torch.empty_like(lower)
    basis[torch.from_numpy(order)] = lower
    return basis


def _as_tensor(array: np.ndarray) -> "torch.Tensor":
    """A torch view of ``array`` (read only here; torch warns about read-only buffers)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _cut(svd: tuple[np.ndarray, np.ndarray, np.ndarray], total: float, rank: int | None, energy: float | None) -> TruncatedSVD:
    u, s, vt = svd
    if rank is None:
        cumulative = np.cumsum(s.astype(np.float64) ** 2)
        rank = 1 if total <= 0 else int(min(len(s), np.searchsorted(cumulative / total, energy - 1e-12) + 1))
    return TruncatedSVD(u[:, :rank], s[:rank], vt[:rank], total)
