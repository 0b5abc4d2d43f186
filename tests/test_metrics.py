"""
Tests of evaluations/metrics.py against closed forms, brute-force implementations, the formulas
written out here, and independent packages (prdc, torchmetrics; both in the dev extra).
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
    density_coverage,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    kid_subsets,
    manifold_metrics,
    manifold_radii,
    polynomial_mmd2,
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


# ----------------------------------------------------------------------------------------------
# Density and coverage (Naeem et al. 2020)


def formula_density_coverage(ref: np.ndarray, sample: np.ndarray, k: int) -> tuple[float, float]:
    """The facts sheet's formulas on Euclidean distances in float64, written out directly."""
    ref, sample = ref.astype(np.float64), sample.astype(np.float64)
    nnd = np.sort(cdist(ref, ref), axis=1)[:, k]  # k-th nearest other real (column 0: itself)
    cross = cdist(sample, ref)  # [M x N]: |Y_j - X_i|
    inside = cross <= nnd[None, :]
    density = inside.sum() / (k * len(sample))
    coverage = (cross.min(axis=0) <= nnd).mean()
    return float(density), float(coverage)


def shifted_sets(seed: int, n: int = 70, m: int = 55, dim: int = 12):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((n, dim)).astype(np.float32)
    sample = (rng.standard_normal((m, dim)) * 1.2 + 0.3).astype(np.float32)
    return ref, sample


@pytest.mark.parametrize("block_size", [4, 33, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_density_coverage_match_the_formula(block_size, dtype):
    ref, sample = shifted_sets(11)
    for k in (1, 5, 9):
        expected = formula_density_coverage(ref, sample, k)
        assert 0.0 < expected[1] < 1.0 and expected[0] > 0.0  # a non-trivial case
        got = density_coverage(ref, sample, k=k, block_size=block_size, device="cpu", dtype=dtype)
        assert got == pytest.approx(expected, rel=1e-12, abs=0)


def test_density_coverage_precision_recall_match_the_prdc_package():
    import prdc  # the dev extra's
    ref, sample = shifted_sets(12, n=120, m=90, dim=20)
    expected = prdc.compute_prdc(real_features=ref, fake_features=sample, nearest_k=5)
    got = manifold_metrics(ref, sample, k=5, dc_k=5, device="cpu")
    assert 0.1 < expected["density"] and 0.0 < expected["coverage"] < 1.0
    for name in ("precision", "recall", "density", "coverage"):
        assert got[name] == pytest.approx(float(expected[name]), rel=1e-6, abs=0), name


def test_one_pass_gives_what_the_separate_metrics_give():
    ref, sample = shifted_sets(13)
    together = manifold_metrics(ref, sample, block_size=16, device="cpu")
    assert (together["precision"], together["recall"]) == precision_recall(ref, sample, device="cpu")
    assert (together["density"], together["coverage"]) == density_coverage(ref, sample, device="cpu")
    assert manifold_metrics(ref, sample, ("coverage",), device="cpu") == {
        "coverage": together["coverage"]
    }


def test_density_coverage_closed_forms():
    feats = np.random.default_rng(14).standard_normal((40, 8))
    # the same set: every reference ball holds its own point and its k neighbours
    assert density_coverage(feats, feats.copy(), k=5, device="cpu") == (6 / 5, 1.0)
    assert density_coverage(feats, feats + 1000.0, k=5, device="cpu") == (0.0, 0.0)


def test_density_counts_points_on_a_ball_boundary():
    # reference points 0, 1, ..., 9 on a line: every 1-NN radius is exactly 1; a sample at 2.0
    # lies at distance 0 of one point and exactly 1 from two more (prdc's strict < counts 1)
    ref = np.arange(10, dtype=np.float32)[:, None]
    sample = np.array([[2.0]], dtype=np.float32)
    density, coverage = density_coverage(ref, sample, k=1, device="cpu")
    assert density == 3.0 and coverage == 0.3


def test_density_coverage_need_more_references_than_k():
    with pytest.raises(ValueError, match="more than 5 features, got 5"):
        density_coverage(np.zeros((5, 3)), np.zeros((9, 3)), k=5, device="cpu")
    with pytest.raises(ValueError, match="not a choice"):
        manifold_metrics(np.zeros((9, 3)), np.zeros((9, 3)), ("fid",), device="cpu")


# ----------------------------------------------------------------------------------------------
# KID (Binkowski et al. 2018)


def formula_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, from the definition with explicit sums."""
    m, d = x.shape
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    off_diagonal = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
    return off_diagonal / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m)


def pool3_like(count: int, shift: float, seed: int, dim: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.abs(rng.standard_normal((count, dim)) * 0.5 + shift).astype(np.float32)


def test_kid_matches_the_formula_on_the_same_subsets():
    ref, sample = pool3_like(300, 0.0, 15), pool3_like(250, 0.3, 16)
    subsets = kid_subsets(len(ref), len(sample), subsets=20, subset_size=100, seed=3)
    per_subset = [
        formula_mmd2(ref[i].astype(np.float64), sample[j].astype(np.float64)) for i, j in subsets
    ]
    mean, std = kernel_inception_distance(
        ref, sample, subsets=20, subset_size=100, seed=3, device="cpu"
    )
    assert mean > 0.005 and mean > 5 * std  # clearly different sets
    assert mean == pytest.approx(np.mean(per_subset), rel=1e-6)
    assert std == pytest.approx(np.std(per_subset), rel=1e-6)  # ddof = 0, as torch-fidelity


def test_kid_matches_torchmetrics_functions():
    import torchmetrics.image.kid as kid_module  # the dev extra's
    ref, sample = pool3_like(200, 0.0, 17, dim=48), pool3_like(160, 0.1, 18, dim=48)
    subsets = kid_subsets(len(ref), len(sample), subsets=10, subset_size=80, seed=5)
    theirs = [
        kid_module.poly_mmd(
            torch.from_numpy(ref[i]).double(), torch.from_numpy(sample[j]).double()
        ).item()
        for i, j in subsets
    ]
    mean, std = kernel_inception_distance(ref, sample, subsets=10, subset_size=80, seed=5, device="cpu")
    assert mean == pytest.approx(np.mean(theirs), rel=1e-6)
    assert std == pytest.approx(np.std(theirs), rel=1e-6)
    # torchmetrics' metric object on given features (an identity "network"): with one subset
    # of every feature its random draw is only a permutation, which the estimate ignores
    metric = kid_module.KernelInceptionDistance(feature=torch.nn.Identity(), subsets=1, subset_size=160)
    metric.update(torch.from_numpy(ref[:160]).double(), real=True)
    metric.update(torch.from_numpy(sample).double(), real=False)
    their_mean, their_std = metric.compute()
    mean, std = kernel_inception_distance(ref[:160], sample, subsets=1, subset_size=160, device="cpu")
    assert mean == pytest.approx(their_mean.item(), rel=1e-6) and std == their_std.item() == 0.0


def test_kid_subsets_are_distinct_seeded_and_bounded():
    subsets = kid_subsets(50, 40, subsets=30, subset_size=40, seed=1)
    assert len(subsets) == 30
    for ref_index, sample_index in subsets:
        assert len(set(ref_index.tolist())) == 40 and ref_index.max() < 50
        assert sorted(sample_index.tolist()) == list(range(40))  # all 40 samples, no repeats
    again = kid_subsets(50, 40, subsets=30, subset_size=40, seed=1)
    assert all((a[0] == b[0]).all() for a, b in zip(subsets, again))
    other = kid_subsets(50, 40, subsets=30, subset_size=40, seed=2)
    assert any((a[0] != b[0]).any() for a, b in zip(subsets, other))
    with pytest.raises(ValueError, match="subset size 41 is larger than the 40 sample features"):
        kid_subsets(50, 40, subsets=1, subset_size=41)


def test_kid_of_whole_batches_is_one_estimate_with_zero_std():
    ref, sample = pool3_like(40, 0.0, 20, dim=8), pool3_like(40, 0.2, 21, dim=8)
    whole = formula_mmd2(ref.astype(np.float64), sample.astype(np.float64))
    assert kernel_inception_distance(ref, sample, 100, 40, device="cpu") == (
        pytest.approx(whole, rel=1e-12), 0.0
    )
    # a smaller subset, or a larger sample set: subsets differ, and so do their estimates
    assert kernel_inception_distance(ref, sample, 5, 39, device="cpu")[1] > 0
    assert kernel_inception_distance(ref, pool3_like(41, 0.2, 21, dim=8), 5, 40, device="cpu")[1] > 0


def test_kid_is_unbiased_where_fid_is_not():
    # two sets from one distribution: KID averages to ~0 at any size (its standard error
    # shrinks), while FID is biased upwards at small sizes
    big = pool3_like(4000, 0.0, 19, dim=16)
    kids, fids = [], []
    for start in range(0, 4000, 200):
        ref, sample = big[start : start + 100], big[start + 100 : start + 200]
        kids.append(polynomial_mmd2(torch.from_numpy(ref).double(), torch.from_numpy(sample).double()))
        fids.append(frechet_distance(*compute_statistics(ref), *compute_statistics(sample)))
    assert abs(np.mean(kids)) < 3 * np.std(kids) / np.sqrt(len(kids))
    assert np.mean(fids) > 10 * np.std(fids) / np.sqrt(len(fids))
