"""Tests for fmri_diffusers.metrics: reference implementations and hand-built cases."""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import sklearn.metrics
from scipy.spatial.distance import cdist, jensenshannon, pdist

from fmri_diffusers import metrics


@pytest.fixture
def paired(rng):
    real = rng.normal(size=(30, 12))
    recon = real + 0.5 * rng.normal(size=real.shape) + 0.1
    return real, recon


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize("fn", [metrics.mse, metrics.voxelwise_r, metrics.ks_statistic])
def test_nan_raises_with_count(fn, rng):
    real = rng.normal(size=(5, 4))
    gen = real.copy()
    gen[1, 2] = np.nan
    gen[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"contains 2 NaN and 0 infinite values \(in 2 of 5"):
        fn(real, gen)


def test_wrong_ndim_and_width_raise(rng):
    with pytest.raises(ValueError, match=r"expected real of shape \(n_samples, n_voxels\), got shape \(4,\)"):
        metrics.mse(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="real has 4 voxels but generated has 3"):
        metrics.ks_statistic(np.zeros((5, 4)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="paired metrics need one reconstruction per original"):
        metrics.mse(np.zeros((5, 4)), np.zeros((6, 4)))


def test_non_numeric_raises_type_error():
    with pytest.raises(TypeError, match="mse: real must be a numeric array, got list"):
        metrics.mse([["a", "b"]], np.zeros((1, 2)))


def test_too_few_samples_names_metric():
    with pytest.raises(ValueError, match="frechet_distance needs at least 2 samples in gen_feats, got 1"):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="knn_precision_recall needs at least 6 samples in real, got 5"):
        metrics.knn_precision_recall(np.zeros((5, 3)), np.zeros((10, 3)), k=5)


# ---------------------------------------------------------------------------- reconstructions
def test_correlations_match_scipy(paired):
    real, recon = paired
    assert metrics.pearson_r(real, recon) == pytest.approx(
        scipy.stats.pearsonr(real.ravel(), recon.ravel())[0], rel=1e-12
    )
    vox = metrics.voxelwise_r(real, recon)
    assert vox.shape == (12,)
    np.testing.assert_allclose(
        vox, [scipy.stats.pearsonr(real[:, j], recon[:, j])[0] for j in range(12)], rtol=1e-12
    )
    smp = metrics.samplewise_r(real, recon)
    assert smp.shape == (30,)
    np.testing.assert_allclose(
        smp, [scipy.stats.pearsonr(real[i], recon[i])[0] for i in range(30)], rtol=1e-12
    )


def test_voxelwise_r_constant_voxel_is_nan(paired):
    real, recon = paired
    recon = recon.copy()
    recon[:, 3] = 7.0
    vox = metrics.voxelwise_r(real, recon)
    assert np.isnan(vox[3]) and np.isfinite(np.delete(vox, 3)).all()


def test_error_metrics_match_sklearn(paired):
    real, recon = paired
    assert metrics.mse(real, recon) == pytest.approx(sklearn.metrics.mean_squared_error(real, recon))
    assert metrics.rmse(real, recon) == pytest.approx(np.sqrt(sklearn.metrics.mean_squared_error(real, recon)))
    assert metrics.mae(real, recon) == pytest.approx(sklearn.metrics.mean_absolute_error(real, recon))
    assert metrics.r2_score(real, recon) == pytest.approx(
        sklearn.metrics.r2_score(real, recon, multioutput="uniform_average")
    )
    # Uniform, not variance-weighted: the two conventions differ on voxels of unequal variance.
    scaled = real * np.linspace(0.1, 3, 12)
    noisy = scaled + 0.5 * np.random.default_rng(1).normal(size=scaled.shape)
    assert metrics.r2_score(scaled, noisy) == pytest.approx(sklearn.metrics.r2_score(scaled, noisy))
    assert metrics.r2_score(scaled, noisy) != pytest.approx(
        sklearn.metrics.r2_score(scaled, noisy, multioutput="variance_weighted")
    )


def test_r2_constant_voxel_follows_sklearn(paired):
    real, recon = paired
    real = real.copy()
    real[:, 0] = 2.0
    assert metrics.r2_score(real, recon) == pytest.approx(sklearn.metrics.r2_score(real, recon))


def test_snr_and_psnr_hand_built():
    real = np.array([[1.0, -1.0], [3.0, -3.0]])  # mean square 5, range 6
    recon = real + np.array([[0.5, -0.5], [0.5, -0.5]])  # error power 0.25
    assert metrics.snr_db(real, recon) == pytest.approx(10 * np.log10(5 / 0.25))
    assert metrics.psnr_db(real, recon) == pytest.approx(10 * np.log10(36 / 0.25))
    assert metrics.snr_db(real, real) == np.inf


# ---------------------------------------------------------------------------- distributions
def test_moments_difference_matches_scipy(rng):
    real = rng.gamma(2.0, size=(50, 6))
    gen = rng.normal(size=(40, 6))
    got = metrics.moments_difference(real, gen)
    for key, fn in [
        ("mean", lambda x: x.mean(0)),
        ("std", lambda x: x.std(0)),
        ("skewness", lambda x: scipy.stats.skew(x, axis=0)),
        ("kurtosis", lambda x: scipy.stats.kurtosis(x, axis=0)),
    ]:
        assert got[key] == pytest.approx(np.mean(np.abs(fn(real) - fn(gen))), rel=1e-10), key


def test_moments_difference_constant_voxel_is_finite(rng):
    real = rng.normal(size=(20, 3))
    gen = rng.normal(size=(20, 3))
    real[:, 1] = gen[:, 1] = 4.0
    assert all(np.isfinite(v) for v in metrics.moments_difference(real, gen).values())


@pytest.mark.parametrize("rounding", [None, 1])
def test_ks_statistic_matches_scipy(rng, rounding):
    real = rng.normal(size=(37, 9))
    gen = rng.normal(0.3, 1.2, size=(23, 9))
    if rounding is not None:  # many ties within and across samples
        real, gen = np.round(real, rounding), np.round(gen, rounding)
    expected = [scipy.stats.ks_2samp(real[:, j], gen[:, j]).statistic for j in range(9)]
    np.testing.assert_allclose(metrics.ks_statistic(real, gen), expected, atol=1e-12)


def test_ks_statistic_chunks_over_voxels(rng, monkeypatch):
    monkeypatch.setattr(metrics, "_KS_CHUNK", 4)
    real, gen = rng.normal(size=(15, 10)), rng.normal(size=(12, 10))
    expected = [scipy.stats.ks_2samp(real[:, j], gen[:, j]).statistic for j in range(10)]
    np.testing.assert_allclose(metrics.ks_statistic(real, gen), expected, atol=1e-12)


def test_js_divergence_matches_scipy(rng):
    real = rng.normal(size=(40, 10))
    gen = rng.normal(0.5, 2.0, size=(30, 10))
    edges = np.linspace(min(real.min(), gen.min()), max(real.max(), gen.max()), 21)
    p = np.histogram(real, edges)[0]
    q = np.histogram(gen, edges)[0]
    expected = jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2
    assert metrics.js_divergence(real, gen, n_bins=20) == pytest.approx(expected, rel=1e-10)
    assert metrics.js_divergence(real, real) == pytest.approx(0.0, abs=1e-12)
    # Disjoint supports: the base-2 divergence reaches its maximum of 1.
    assert metrics.js_divergence(real, real + 100.0) == pytest.approx(1.0)


def _dense_offdiag(real, gen):
    c1, c2 = np.corrcoef(real, rowvar=False), np.corrcoef(gen, rowvar=False)
    off = ~np.eye(c1.shape[0], dtype=bool)
    return c1[off], c2[off]


def test_correlation_structure_matches_dense(rng):
    mixing = rng.normal(size=(15, 15))
    real = rng.normal(size=(40, 15)) @ mixing
    gen = rng.normal(size=(25, 15)) @ (mixing + 0.8 * rng.normal(size=(15, 15))) + 3.0
    c1, c2 = _dense_offdiag(real, gen)
    assert metrics.correlation_structure_similarity(real, gen) == pytest.approx(
        np.corrcoef(c1, c2)[0, 1], rel=1e-9
    )
    assert metrics.correlation_matrix_distance(real, gen) == pytest.approx(
        np.sqrt(np.mean((c1 - c2) ** 2)), rel=1e-9
    )
    assert metrics.correlation_structure_similarity(real, 2 * real + 1) == pytest.approx(1.0)


def test_correlation_structure_skips_constant_voxels(rng):
    real = rng.normal(size=(30, 8)) @ rng.normal(size=(8, 8))
    gen = real + rng.normal(size=real.shape)
    gen[:, 2] = 1.0
    keep = np.arange(8) != 2
    c1, c2 = _dense_offdiag(real[:, keep], gen[:, keep])
    assert metrics.correlation_structure_similarity(real, gen) == pytest.approx(np.corrcoef(c1, c2)[0, 1])


def test_correlation_structure_bounded_memory_at_20k_voxels(rng):
    # A dense 20k x 20k float64 matrix would need 3.2 GB; the Gram route needs (n, v) arrays.
    real = rng.normal(size=(20, 20_000)).astype(np.float32)
    gen = rng.normal(size=(20, 20_000)).astype(np.float32)
    assert -1.0 <= metrics.correlation_structure_similarity(real, gen) <= 1.0


# ---------------------------------------------------------------------------- generative quality
def test_fit_pca_caps_components(rng):
    pca = metrics.fit_pca(rng.normal(size=(8, 30)), n_components=20, seed=0)
    assert pca.n_components_ == 7


def _fd_reference(a, b):
    """FD with tr((S1 S2)^1/2) from the eigenvalues of S1 S2 (real and >= 0)."""
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(s1 @ s2).real
    d = a.mean(0) - b.mean(0)
    return d @ d + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig, 0, None)).sum()


def test_frechet_distance(rng):
    a = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(150, 5)) @ rng.normal(size=(5, 5)) + 1.0
    assert metrics.frechet_distance(a, b) == pytest.approx(_fd_reference(a, b), rel=1e-8)
    shift = np.array([1.0, -2.0, 0.0, 0.5, 0.0])
    assert metrics.frechet_distance(a, a + shift) == pytest.approx(shift @ shift, rel=1e-6)
    # 1-D: N(0, s^2) vs N(0, (2s)^2) is (s - 2s)^2 = s^2.
    x = rng.normal(size=(100, 1))
    x -= x.mean()
    assert metrics.frechet_distance(x, 2 * x) == pytest.approx(np.var(x, ddof=1), rel=1e-8)


def test_frechet_distance_rank_deficient(rng):
    # Fewer samples than features: singular covariances, as with small held-out sets.
    a, b = rng.normal(size=(5, 10)), rng.normal(size=(50, 10))
    assert metrics.frechet_distance(a, b) == pytest.approx(_fd_reference(a, b), rel=1e-5)
    # Ill-conditioned: 20 samples in 10-D with nearly collinear features (scipy's sqrtm(S1 @ S2) turns
    # complex here, which made the FID reference code fail on small held-out sets).
    mix = np.eye(10) + 0.999 * np.ones((10, 10))
    a, b = rng.normal(size=(20, 10)) @ mix, rng.normal(size=(20, 10)) @ mix * 1.3
    fd = metrics.frechet_distance(a, b)
    assert np.isfinite(fd) and fd == pytest.approx(_fd_reference(a, b), rel=1e-6)


def test_mmd_rbf_matches_loops(rng):
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1, size=(9, 3))
    bw = 1.3
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * bw**2))  # noqa: E731
    xx = np.mean([k(x[i], x[j]) for i in range(7) for j in range(7) if i != j])
    yy = np.mean([k(y[i], y[j]) for i in range(9) for j in range(9) if i != j])
    xy = np.mean([k(a, b) for a in x for b in y])
    assert metrics.mmd_rbf(x, y, bandwidth=bw) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    median = np.median(pdist(np.concatenate([x, y])))
    assert metrics.median_pairwise_distance(np.concatenate([x, y])) == pytest.approx(median)
    assert metrics.mmd_rbf(x, y) == pytest.approx(metrics.mmd_rbf(x, y, bandwidth=median))


def test_mmd_rbf_separates_distributions(rng):
    x, y = rng.normal(size=(100, 4)), rng.normal(size=(100, 4))
    same = metrics.mmd_rbf(x, y)
    shifted = metrics.mmd_rbf(x, y + 1.0)
    assert abs(same) < 0.02 < shifted


def test_c2st_auc(rng):
    real = rng.normal(size=(80, 6))
    assert metrics.c2st_auc(real, rng.normal(size=(120, 6)), seed=0) == pytest.approx(0.5, abs=0.15)
    assert metrics.c2st_auc(real, rng.normal(size=(120, 6)) + 3.0, seed=0) > 0.99
    with pytest.raises(ValueError, match="c2st_auc needs at least 5 samples in generated, got 4"):
        metrics.c2st_auc(real, real[:4])


def _pr_reference(real, gen, k):
    d_rr, d_gg, d_gr = cdist(real, real), cdist(gen, gen), cdist(gen, real)
    r_real = np.sort(d_rr, axis=1)[:, k]
    r_gen = np.sort(d_gg, axis=1)[:, k]
    precision = np.mean([(d_gr[i] <= r_real).any() for i in range(len(gen))])
    recall = np.mean([(d_gr[:, j] <= r_gen).any() for j in range(len(real))])
    return precision, recall


def test_knn_precision_recall_matches_brute_force(rng, monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK", 7)  # exercise the chunked path
    real = rng.normal(size=(40, 3))
    gen = rng.normal(1.5, 1.0, size=(30, 3))
    got = metrics.knn_precision_recall(real, gen, k=3)
    precision, recall = _pr_reference(real, gen, 3)
    assert (got["precision"], got["recall"]) == pytest.approx((precision, recall))
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1


def test_knn_precision_recall_hand_built(rng):
    real = rng.normal(size=(50, 2))
    # A collapsed generator inside the real data: full precision, almost no recall.
    collapsed = real[:1] + 1e-3 * rng.normal(size=(20, 2))
    got = metrics.knn_precision_recall(real, collapsed, k=3)
    assert got["precision"] == 1.0 and got["recall"] < 0.1
    far = metrics.knn_precision_recall(real, real + 100.0, k=3)
    assert far == {"precision": 0.0, "recall": 0.0}


def test_dispersion_ratio(rng):
    train = rng.normal(size=(100, 5))
    assert metrics.dispersion_ratio(2 * train + 1, train) == pytest.approx(4.0)
    assert metrics.dispersion_ratio(train, train) == pytest.approx(1.0)
    assert metrics.total_variance(train) == pytest.approx(np.trace(np.cov(train, rowvar=False)))


# ---------------------------------------------------------------------------- memorisation
def test_dcr_matches_cdist(rng, monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK", 6)
    ref, queries = rng.normal(size=(25, 4)), rng.normal(size=(17, 4))
    np.testing.assert_allclose(metrics.dcr(ref, queries), cdist(queries, ref).min(axis=1), rtol=1e-9)


def test_memorisation_summary_flags_copies(rng):
    train, heldout = rng.normal(size=(60, 8)), rng.normal(size=(20, 8))
    copies = train[:30] + 1e-3 * rng.normal(size=(30, 8))
    summary = metrics.memorisation_summary(train, copies, heldout)
    assert summary["share_closer_than_heldout"] == 1.0
    assert summary["dcr_ratio"] < 0.01
    fresh = metrics.memorisation_summary(train, rng.normal(size=(30, 8)), heldout)
    assert fresh["dcr_ratio"] == pytest.approx(1.0, abs=0.25)
    d_held = cdist(heldout, train).min(1)
    assert fresh["dcr_median_heldout"] == pytest.approx(np.median(d_held))


# ---------------------------------------------------------------------------- utility
def test_tstr_accuracy(rng):
    y = np.repeat([0, 1], 40)
    x = rng.normal(size=(80, 5)) + 3.0 * y[:, None]
    test_y = np.repeat([0, 1], 20)
    test_x = rng.normal(size=(40, 5)) + 3.0 * test_y[:, None]
    assert metrics.tstr_accuracy(x, y, test_x, test_y) == 1.0
    # Training labels flipped: every real test sample is misclassified.
    assert metrics.tstr_accuracy(x, 1 - y, test_x, test_y) == 0.0
    with pytest.raises(ValueError, match=r"expected train_y of shape \(80,\), got shape \(79,\)"):
        metrics.tstr_accuracy(x, y[:-1], test_x, test_y)
    with pytest.raises(ValueError, match="train_y must hold at least 2 classes"):
        metrics.tstr_accuracy(x, np.zeros(80), test_x, test_y)


# ---------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_of_mean_matches_normal_theory(rng):
    x = rng.normal(size=(400, 1))
    point, low, high = metrics.bootstrap_ci(lambda a: a.mean(), x, n_boot=500, seed=0)
    assert point == pytest.approx(x.mean())
    half = 1.96 * x.std(ddof=1) / np.sqrt(400)
    assert low == pytest.approx(point - half, abs=0.3 * half)
    assert high == pytest.approx(point + half, abs=0.3 * half)
    assert metrics.bootstrap_ci(lambda a: a.mean(), x, seed=3) == metrics.bootstrap_ci(
        lambda a: a.mean(), x, seed=3
    )


def test_bootstrap_ci_paired_keeps_rows_together(rng):
    real = rng.normal(size=(30, 4))
    point, low, high = metrics.bootstrap_ci(metrics.mse, real, real + 1.0, n_boot=50, paired=True)
    assert point == low == high == pytest.approx(1.0)  # unpaired resampling would vary
    with pytest.raises(ValueError, match=r"paired arrays need equal row counts, got \[3, 4\]"):
        metrics.bootstrap_ci(metrics.mse, real[:3], real[:4], paired=True)
