"""
Tests of evaluations/metrics.py against closed forms and brute-force implementations.
"""

import math

import numpy as np
import pytest
import torch
from scipy import linalg
from scipy.spatial.distance import cdist

from evaluations import metrics
from evaluations.metrics import (
    compute_fid,
    compute_statistics,
    frechet_distance,
    inception_score,
    manifold_radii,
    precision_recall,
)


def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


# ----------------------------------------------------------------------------------------------
# Statistics and Frechet distance


def test_compute_statistics_matches_mean_and_unbiased_covariance():
    feats = np.arange(12, dtype=np.float32).reshape(4, 3) ** 1.5
    mu, sigma = compute_statistics(feats)
    feats64 = feats.astype(np.float64)
    centred = feats64 - feats64.mean(axis=0)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, feats64.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, centred.T @ centred / 3, rtol=1e-12)


def test_compute_statistics_needs_two_vectors():
    with pytest.raises(ValueError, match="at least 2"):
        compute_statistics(np.zeros((1, 5)))


def test_frechet_distance_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(16), random_spd(rng, 16)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    var1, var2 = rng.uniform(0.1, 3.0, 10), rng.uniform(0.1, 3.0, 10)
    # diagonal covariances commute: tr sqrt(S1 S2) = sum sqrt(v1 v2)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = compute_fid(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_general_matches_scipy_sqrtm_of_the_product():
    # the original evaluator's formula: tr of scipy's general matrix square root of S1 S2
    rng = np.random.default_rng(2)
    for dim in (12, 64):
        mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
        _, s1 = compute_statistics(rng.standard_normal((4 * dim, dim)))
        _, s2 = compute_statistics(rng.standard_normal((4 * dim, dim)) * 1.3 + 0.2)
        tr_covmean = np.trace(linalg.sqrtm(s1 @ s2)).real
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_rank_deficient_covariances_stay_finite():
    # 5 samples in 32 dimensions: both covariances have rank 4
    rng = np.random.default_rng(3)
    _, s1 = compute_statistics(rng.standard_normal((5, 32)))
    _, s2 = compute_statistics(rng.standard_normal((5, 32)))
    mu = np.zeros(32)
    with np.errstate(all="ignore"):
        value = frechet_distance(mu, s1, mu, s2)
    assert math.isfinite(value)
    assert value > 0


def test_frechet_distance_guard_adds_eps_when_the_root_is_not_finite(monkeypatch):
    rng = np.random.default_rng(4)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    var1, var2 = rng.uniform(0.5, 2.0, 6), rng.uniform(0.5, 2.0, 6)
    real_trace, calls = metrics.trace_sqrt_product, []

    def failing_once(sigma1, sigma2):
        calls.append((sigma1, sigma2))
        return float("nan") if len(calls) == 1 else real_trace(sigma1, sigma2)

    monkeypatch.setattr(metrics, "trace_sqrt_product", failing_once)
    eps = 1e-2
    with pytest.warns(UserWarning, match="degenerate"):
        got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2), eps=eps)
    assert len(calls) == 2
    # the retry uses (S1 + eps I)(S2 + eps I); the traces stay those of S1 and S2
    tr_covmean = np.sum(np.sqrt((var1 + eps) * (var2 + eps)))
    expected = np.sum((mu1 - mu2) ** 2) + var1.sum() + var2.sum() - 2 * tr_covmean
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_rejects_non_finite_covariances():
    bad = np.eye(3)
    bad[0, 1] = np.nan
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="not finite"):
        frechet_distance(np.zeros(3), bad, np.zeros(3), np.eye(3))


def test_frechet_distance_shape_mismatch():
    with pytest.raises(ValueError, match="sigma2 has shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


# ----------------------------------------------------------------------------------------------
# Inception Score


def test_inception_score_uniform_predictions_is_one():
    assert inception_score(np.zeros((40, 1008))) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_confident_distinct_classes_is_class_count():
    classes = 7
    logits = 200.0 * np.eye(classes)[np.arange(70) % classes]  # every class equally often
    assert inception_score(logits) == pytest.approx(classes, rel=1e-9)


def test_inception_score_averages_over_splits():
    # split 1: all confident in class 0 (score 1); split 2: five classes equally (score 5)
    logits = np.zeros((20, 5))
    logits[:10, 0] = 300.0
    logits[10:, :] = 300.0 * np.eye(5)[np.arange(10) % 5]
    assert inception_score(logits, split_size=10) == pytest.approx(3.0, rel=1e-9)
    assert inception_score(logits, split_size=20) == pytest.approx(
        math.exp(np.log(20 / 12) * 12 / 20 + np.log(20 / 2) * 8 / 20), rel=1e-9
    )


# ----------------------------------------------------------------------------------------------
# Precision and recall


def brute_force_radii(feats: np.ndarray, k: int) -> np.ndarray:
    dists = cdist(feats, feats, "sqeuclidean")  # sums of squared differences, float64
    return np.sort(dists, axis=1)[:, k]


def brute_force_precision_recall(
    ref: np.ndarray, sample: np.ndarray, k: int
) -> tuple[float, float]:
    ref, sample = ref.astype(np.float64), sample.astype(np.float64)
    ref_radii, sample_radii = brute_force_radii(ref, k), brute_force_radii(sample, k)
    cross = cdist(ref, sample, "sqeuclidean")  # [N x M]
    precision = (cross <= ref_radii[:, None]).any(axis=0).mean()
    recall = (cross <= sample_radii[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


@pytest.mark.parametrize("block_size", [2, 7, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_precision_recall_matches_brute_force(block_size, dtype):
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((60, 16)).astype(np.float32)
    sample = (rng.standard_normal((45, 16)) * 1.3 + 0.4).astype(np.float32)
    expected = brute_force_precision_recall(ref, sample, k=3)
    assert 0.0 < expected[0] < 1.0 and 0.0 < expected[1] < 1.0  # a non-trivial case
    got = precision_recall(ref, sample, k=3, block_size=block_size, device="cpu", dtype=dtype)
    assert got == expected


@pytest.mark.parametrize("block_size", [3, 50])
def test_manifold_radii_matches_brute_force(block_size):
    rng = np.random.default_rng(6)
    feats = rng.standard_normal((37, 8))
    expected = brute_force_radii(feats, 3)
    got = manifold_radii(feats, k=3, block_size=block_size, device="cpu", dtype=torch.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    got32 = manifold_radii(feats, k=3, block_size=block_size, device="cpu", dtype=torch.float32)
    np.testing.assert_allclose(got32, expected, rtol=1e-5)


def test_precision_recall_identical_sets_is_one():
    feats = np.random.default_rng(7).standard_normal((50, 2048)).astype(np.float32) * 5 + 20
    assert precision_recall(feats, feats, block_size=16, device="cpu") == (1.0, 1.0)


def test_precision_recall_disjoint_far_sets_is_zero():
    rng = np.random.default_rng(8)
    ref = rng.standard_normal((30, 32))
    sample = rng.standard_normal((30, 32)) + 100.0
    assert precision_recall(ref, sample, device="cpu") == (0.0, 0.0)


def test_precision_recall_bad_shapes():
    with pytest.raises(ValueError, match="same D"):
        precision_recall(np.zeros((10, 4)), np.zeros((10, 5)), device="cpu")
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(np.zeros((3, 4)), np.zeros((10, 4)), device="cpu")


def test_float32_radii_accuracy_on_inception_like_features():
    # non-negative 2048-d features with pool_3's scale (post-ReLU averages, radii ~ 300):
    # the centred float32 expansion stays within 1e-6 of float64 (measured ~2e-7)
    gen = torch.Generator().manual_seed(9)
    feats = (torch.randn(400, 2048, generator=gen) * 0.5).abs()
    exact = manifold_radii(feats, device="cpu", dtype=torch.float64)
    fast = manifold_radii(feats, block_size=128, device="cpu", dtype=torch.float32)
    assert np.max(np.abs(fast - exact) / exact) < 1e-6
    np.testing.assert_allclose(exact, brute_force_radii(feats.double().numpy(), 3), rtol=1e-12)


@pytest.mark.gpu
def test_precision_recall_gpu_matches_brute_force():
    rng = np.random.default_rng(10)
    ref = rng.standard_normal((300, 64)).astype(np.float32)
    sample = (rng.standard_normal((200, 64)) * 1.2).astype(np.float32)
    expected = brute_force_precision_recall(ref, sample, k=3)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 matmuls: must not leak into the distances
    try:
        assert precision_recall(ref, sample, block_size=64, device="cuda") == expected
    finally:
        torch.set_float32_matmul_precision(previous)


def test_tf32_is_turned_off_for_cuda_distances_and_restored():
    flags = torch.backends.cuda.matmul
    if not hasattr(flags, "fp32_precision"):
        pytest.skip("torch < 2.9 has no fp32_precision flag")
    previous = flags.fp32_precision
    try:
        flags.fp32_precision = "tf32"
        with metrics._full_fp32_matmul(torch.device("cuda")):
            assert flags.fp32_precision == "ieee"
        assert flags.fp32_precision == "tf32"
    finally:
        flags.fp32_precision = previous
