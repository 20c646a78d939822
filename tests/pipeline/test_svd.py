"""truncated_svd: the exact float64 SVD on small weights, and a randomized one on
big weights whose reconstruction error stays within 1% of the optimum."""

import numpy as np
import pytest

import optc.svd as svd_module
from optc.svd import truncated_svd


def _flat_spectrum(n: int, seed: int = 0) -> np.ndarray:
    """A randomly initialised layer's weight: the hardest (flattest) spectrum."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, n)).astype(np.float32) / np.sqrt(n)


def _optimal_error(w: np.ndarray, rank: int) -> float:
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    return float(np.sqrt(np.sum(s[rank:] ** 2)))


def test_small_matrices_get_the_exact_svd():
    w = _flat_spectrum(64)
    got = truncated_svd(w, rank=8)
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(got.s, s[:8], rtol=1e-12)
    np.testing.assert_allclose((got.u * got.s) @ got.vt, (u[:, :8] * s[:8]) @ vt[:8], atol=1e-12)
    assert got.total_energy == pytest.approx(float(np.sum(s**2)), rel=1e-9)


def test_randomized_svd_is_within_one_percent_of_the_optimal_error(monkeypatch):
    monkeypatch.setattr(svd_module, "EXACT_MAX_ELEMENTS", 0)  # force the randomized path on a testable size
    w = _flat_spectrum(512)
    got = truncated_svd(w, rank=64)
    assert got.u.dtype == np.float32 and got.u.shape == (512, 64) and got.vt.shape == (64, 512)
    err = np.linalg.norm(w.astype(np.float64) - (got.u * got.s).astype(np.float64) @ got.vt)
    assert err <= 1.01 * _optimal_error(w, 64)


def test_randomized_svd_is_exact_on_a_low_rank_matrix(monkeypatch):
    monkeypatch.setattr(svd_module, "EXACT_MAX_ELEMENTS", 0)
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((600, 20)) @ rng.standard_normal((20, 500))).astype(np.float32)
    got = truncated_svd(w, rank=20)
    assert np.linalg.norm(w - (got.u * got.s) @ got.vt) <= 1e-4 * np.linalg.norm(w)
    assert got.energy_kept(20) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("energy", [0.3, 0.6, 0.9])
def test_rank_by_energy_matches_the_full_spectrum(monkeypatch, energy):
    w = _flat_spectrum(512, seed=2)
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    want = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), energy - 1e-12) + 1)
    assert len(truncated_svd(w, energy=energy).s) == want  # exact path
    monkeypatch.setattr(svd_module, "EXACT_MAX_ELEMENTS", 0)
    got = truncated_svd(w, energy=energy)  # randomized (or its exact fallback near full rank)
    assert abs(len(got.s) - want) <= max(2, want // 50)
    assert got.energy_kept(len(got.s)) >= energy - 0.01


def test_zero_matrix_and_rank_caps():
    got = truncated_svd(np.zeros((10, 6), np.float32), energy=0.9)
    assert len(got.s) == 1 and got.energy_kept(1) == 1.0
    assert len(truncated_svd(np.ones((10, 6), np.float32), rank=99).s) == 6
