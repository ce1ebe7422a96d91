"""Metrics for fMRI reconstructions and generated fMRI patterns.

Every function is a pure function of ``(n_samples, n_voxels)`` arrays (the shape scikit-learn and
nilearn use) and returns floats or numpy arrays. Inputs are validated at the boundary: arrays must
be 2-D, share their width where two are compared, be finite, and have enough rows for the metric.
A NaN in generated samples is a failure of the model: it raises ``ValueError`` with the count,
and is never dropped.

Computation is in float64. Nothing materialises an ``n_voxels x n_voxels`` matrix, and distance
computations are chunked, so memory stays ``O(n_samples * n_voxels)`` at 20k voxels.

Groups
------
- Paired reconstructions: :func:`pearson_r`, :func:`voxelwise_r`, :func:`samplewise_r`,
  :func:`mse`, :func:`rmse`, :func:`mae`, :func:`r2_score`, :func:`snr_db`, :func:`psnr_db`.
- Distributions (real vs generated): :func:`moments_difference`, :func:`ks_statistic`,
  :func:`js_divergence`, :func:`correlation_structure_similarity`,
  :func:`correlation_matrix_distance`.
- Generative quality: :func:`fit_pca`, :func:`frechet_distance`, :func:`mmd_rbf`,
  :func:`median_pairwise_distance`, :func:`c2st_auc`, :func:`knn_precision_recall`,
  :func:`dispersion_ratio`, :func:`total_variance`.
- Memorisation: :func:`dcr`, :func:`memorisation_summary`.
- Utility: :func:`tstr_accuracy` (train-on-synthetic-test-on-real, and TRTR with real training data).
- Uncertainty: :func:`bootstrap_ci`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

# Rows per block in chunked distance computations: a block is (_CHUNK, n_reference) float64.
_CHUNK = 1024
# Voxels per block in the per-voxel KS statistic: a block is (n1 + n2, _KS_CHUNK) float64.
_KS_CHUNK = 2048


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------
def validate_samples(x, name: str, metric: str, min_samples: int = 1) -> np.ndarray:
    """Return ``x`` as a finite float64 ``(n_samples, n_voxels)`` array or raise ``ValueError``.

    ``name`` (the argument) and ``metric`` (the caller) are named in the message, with the
    shape found, the NaN / inf counts, or the number of samples needed.
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{metric}: {name} must be a numeric array, got {type(x).__name__}") from err
    if arr.ndim != 2:
        raise ValueError(
            f"{metric}: expected {name} of shape (n_samples, n_voxels), got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        bad_rows = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(
            f"{metric}: {name} contains {n_nan} NaN and {n_inf} infinite values (in {bad_rows} of "
            f"{arr.shape[0]} samples); non-finite samples are a failure of the model that made "
            "them and are never dropped"
        )
    if arr.shape[0] < min_samples:
        raise ValueError(
            f"{metric} needs at least {min_samples} samples in {name}, got {arr.shape[0]}"
        )
    if arr.shape[1] < 1:
        raise ValueError(f"{metric}: {name} has no voxels (shape {arr.shape})")
    return arr


def validate_labels(y, n: int, name: str, metric: str) -> np.ndarray:
    """Return ``y`` as a ``(n,)`` array (one label per sample) or raise ``ValueError``."""
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{metric}: expected {name} of shape ({n},), got shape {y.shape}")
    return y


def _validate_pair(a, b, names: tuple[str, str], metric: str, min_samples: int = 1, paired=False):
    """Validate two arrays that must have the same width (and the same rows when ``paired``)."""
    a = validate_samples(a, names[0], metric, min_samples)
    b = validate_samples(b, names[1], metric, min_samples)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{metric}: {names[0]} has {a.shape[1]} voxels but {names[1]} has {b.shape[1]}; "
            "expected the same number of voxels"
        )
    if paired and a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{metric}: {names[0]} has {a.shape[0]} samples but {names[1]} has {b.shape[0]}; "
            "paired metrics need one reconstruction per original"
        )
    return a, b


# --------------------------------------------------------------------------------------------
# Paired reconstructions: real (n, v) vs reconstructed (n, v), row i reconstructs row i
# --------------------------------------------------------------------------------------------
def _corr_along(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Pearson r of matching slices along ``axis``; NaN where either slice is constant."""
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=axis) / denom
    return np.where(denom > 0, r, np.nan)


def pearson_r(real, recon) -> float:
    """Pearson r between all values of ``real`` and ``recon``, flattened."""
    real, recon = _validate_pair(real, recon, ("real", "recon"), "pearson_r", 1, paired=True)
    return float(_corr_along(real.reshape(-1, 1), recon.reshape(-1, 1), axis=0)[0])


def voxelwise_r(real, recon) -> np.ndarray:
    """Pearson r across samples for each voxel, shape ``(n_voxels,)``.

    A voxel that is constant in either array (e.g. masked out, filled with its training mean)
    has no correlation: its entry is NaN, so summaries must count such voxels explicitly.
    """
    real, recon = _validate_pair(real, recon, ("real", "recon"), "voxelwise_r", 2, paired=True)
    return _corr_along(real, recon, axis=0)


def samplewise_r(real, recon) -> np.ndarray:
    """Pearson r across voxels for each sample (pattern similarity), shape ``(n_samples,)``."""
    real, recon = _validate_pair(real, recon, ("real", "recon"), "samplewise_r", 1, paired=True)
    if real.shape[1] < 2:
        raise ValueError(f"samplewise_r needs at least 2 voxels, got {real.shape[1]}")
    return _corr_along(real, recon, axis=1)


def mse(real, recon) -> float:
    """Mean squared error over all values."""
    real, recon = _validate_pair(real, recon, ("real", "recon"), "mse", 1, paired=True)
    return float(np.mean((real - recon) ** 2))


def rmse(real, recon) -> float:
    """Root mean squared error over all values."""
    return float(np.sqrt(mse(real, recon)))


def mae(real, recon) -> float:
    """Mean absolute error over all values."""
    real, recon = _validate_pair(real, recon, ("real", "recon"), "mae", 1, paired=True)
    return float(np.mean(np.abs(real - recon)))


def r2_score(real, recon) -> float:
    """Coefficient of determination, uniform average over voxels.

    Same convention as ``sklearn.metrics.r2_score(real, recon, multioutput="uniform_average")``:
    per voxel ``1 - SS_res / SS_tot`` with ``SS_tot`` around that voxel's mean over samples, then
    the plain mean over voxels (not variance-weighted). A voxel constant in ``real`` scores 1 if
    reconstructed exactly, else 0 (sklearn's ``force_finite=True``).
    """
    real, recon = _validate_pair(real, recon, ("real", "recon"), "r2_score", 2, paired=True)
    ss_res = ((real - recon) ** 2).sum(axis=0)  # (v,)
    ss_tot = ((real - real.mean(axis=0)) ** 2).sum(axis=0)  # (v,)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - ss_res / ss_tot
    r2 = np.where(ss_tot > 0, r2, np.where(ss_res == 0, 1.0, 0.0))
    return float(r2.mean())


def snr_db(real, recon) -> float:
    """Signal-to-noise ratio in dB: ``10 log10(mean(real**2) / mean((real - recon)**2))``.

    Signal power is the mean square of ``real`` in its own units (for z-scored data, its
    variance); ``inf`` for a perfect reconstruction.
    """
    real, recon = _validate_pair(real, recon, ("real", "recon"), "snr_db", 1, paired=True)
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(np.mean(real**2) / np.mean((real - recon) ** 2)))


def psnr_db(real, recon) -> float:
    """Peak SNR in dB: ``10 log10(data_range**2 / MSE)``, ``data_range = real.max() - real.min()``.

    The range is that of the reference (``real``), as in scikit-image's ``data_range``.
    """
    real, recon = _validate_pair(real, recon, ("real", "recon"), "psnr_db", 1, paired=True)
    data_range = real.max() - real.min()
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(data_range**2 / np.mean((real - recon) ** 2)))


# --------------------------------------------------------------------------------------------
# Distributions: real (n1, v) vs generated (n2, v), no pairing between rows
# --------------------------------------------------------------------------------------------
def _moments(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-voxel mean, std, skewness and excess kurtosis (biased, as scipy.stats defaults)."""
    mean = x.mean(axis=0)
    centred = x - mean
    var = (centred**2).mean(axis=0)
    constant = var == 0
    safe_var = np.where(constant, 1.0, var)
    # A constant voxel (masked out) is a point mass: skewness and excess kurtosis set to 0.
    skew = np.where(constant, 0.0, (centred**3).mean(axis=0) / safe_var**1.5)
    kurt = np.where(constant, 0.0, (centred**4).mean(axis=0) / safe_var**2 - 3.0)
    return {"mean": mean, "std": np.sqrt(var), "skewness": skew, "kurtosis": kurt}


def moments_difference(real, generated) -> dict[str, float]:
    """Mean over voxels of ``|moment(real) - moment(generated)|`` for four per-voxel moments.

    Moments are the mean, the standard deviation (ddof=0), the skewness and the excess (Fisher)
    kurtosis, each as ``scipy.stats.skew`` / ``kurtosis`` with ``bias=True``. Voxels constant in
    an array have skewness and excess kurtosis 0 there. Returns
    ``{"mean": ..., "std": ..., "skewness": ..., "kurtosis": ...}``; 0 is a perfect match.
    """
    real, generated = _validate_pair(
        real, generated, ("real", "generated"), "moments_difference", 2
    )
    m_real, m_gen = _moments(real), _moments(generated)
    return {key: float(np.mean(np.abs(m_real[key] - m_gen[key]))) for key in m_real}


def ks_statistic(real, generated) -> np.ndarray:
    """Two-sample Kolmogorov-Smirnov statistic for each voxel, shape ``(n_voxels,)``.

    Equals ``scipy.stats.ks_2samp(real[:, j], generated[:, j]).statistic`` for every ``j``:
    ``sup_t |F_real(t) - F_gen(t)|`` over the pooled values, vectorised over voxels.
    """
    real, generated = _validate_pair(real, generated, ("real", "generated"), "ks_statistic", 1)
    n1, n2 = real.shape[0], generated.shape[0]
    # Each pooled value moves the ECDF difference by +1/n1 (real) or -1/n2 (generated).
    steps = np.concatenate([np.full(n1, 1.0 / n1), np.full(n2, -1.0 / n2)])  # (n1 + n2,)
    out = np.empty(real.shape[1])
    for start in range(0, real.shape[1], _KS_CHUNK):
        cols = slice(start, start + _KS_CHUNK)
        pooled = np.concatenate([real[:, cols], generated[:, cols]])  # (n1 + n2, c)
        order = np.argsort(pooled, axis=0, kind="stable")
        values = np.take_along_axis(pooled, order, axis=0)
        diff = np.cumsum(steps[order], axis=0)  # F_real - F_gen after each sorted value
        # With ties, the ECDFs are only defined after the last of equal values.
        run_end = np.ones_like(values, dtype=bool)
        run_end[:-1] = values[1:] != values[:-1]
        out[cols] = np.where(run_end, np.abs(diff), 0.0).max(axis=0)
    return out


def js_divergence(real, generated, n_bins: int = 100) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between the distributions of all values.

    All values of each array (flattened) are binned into ``n_bins`` shared bins spanning the
    pooled range; the result equals ``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2``.
    """
    real, generated = _validate_pair(real, generated, ("real", "generated"), "js_divergence", 1)
    if n_bins < 2:
        raise ValueError(f"js_divergence: n_bins must be >= 2, got {n_bins}")
    lo = min(real.min(), generated.min())
    hi = max(real.max(), generated.max())
    edges = np.linspace(lo, hi, n_bins + 1) if hi > lo else np.array([lo - 0.5, lo + 0.5])
    p = np.histogram(real, bins=edges)[0] / real.size
    q = np.histogram(generated, bins=edges)[0] / generated.size
    m = 0.5 * (p + q)

    def kl_to_m(a):
        nz = a > 0
        return np.sum(a[nz] * np.log2(a[nz] / m[nz]))

    return float(max(0.5 * kl_to_m(p) + 0.5 * kl_to_m(q), 0.0))


def _standardise_columns(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Columns ``keep`` of ``x`` centred and scaled to unit population std, shape (n, keep.sum())."""
    x = x[:, keep]
    x = x - x.mean(axis=0)
    return x / x.std(axis=0)


def _correlation_sums(real: np.ndarray, generated: np.ndarray, metric: str):
    """Sums over the off-diagonal entries of the voxel correlation matrices C1 (real), C2 (gen).

    With column-standardised Z1 (n1, v), C1 = Z1^T Z1 / n1, so without forming any (v, v) matrix:
        sum_ij C1_ij       = ||Z1 1_v||^2 / n1
        sum_ij C1_ij^2     = ||Z1 Z1^T||_F^2 / n1^2
        sum_ij C1_ij C2_ij = ||Z1 Z2^T||_F^2 / (n1 n2)
    and the diagonal contributes exactly v to each (diag C = 1). Cost O(n^2 v).
    Voxels constant in either array have no correlations and are left out.
    Returns (s1, s2, q1, q2, p, m): sums, sums of squares, cross sum, number of entries.
    """
    keep = (real.std(axis=0) > 0) & (generated.std(axis=0) > 0)
    v = int(keep.sum())
    if v < 3:
        raise ValueError(
            f"{metric} needs at least 3 voxels that vary in both arrays, got {v}"
        )
    z1 = _standardise_columns(real, keep)  # (n1, v)
    z2 = _standardise_columns(generated, keep)  # (n2, v)
    n1, n2 = z1.shape[0], z2.shape[0]
    s1 = np.sum(z1.sum(axis=1) ** 2) / n1 - v
    s2 = np.sum(z2.sum(axis=1) ** 2) / n2 - v
    q1 = np.sum((z1 @ z1.T) ** 2) / n1**2 - v
    q2 = np.sum((z2 @ z2.T) ** 2) / n2**2 - v
    p = np.sum((z1 @ z2.T) ** 2) / (n1 * n2) - v
    return s1, s2, q1, q2, p, v * (v - 1)


def correlation_structure_similarity(real, generated) -> float:
    """Pearson r between the off-diagonal entries of the voxel-by-voxel correlation matrices.

    1 means the generated data reproduce the real spatial correlation structure. Computed from
    Gram matrices of the samples (see :func:`_correlation_sums`) in O(n^2 v) time and O(n v)
    memory; voxels constant in either array are left out.
    """
    metric = "correlation_structure_similarity"
    real, generated = _validate_pair(real, generated, ("real", "generated"), metric, 2)
    s1, s2, q1, q2, p, m = _correlation_sums(real, generated, metric)
    cov = p - s1 * s2 / m
    var1, var2 = q1 - s1**2 / m, q2 - s2**2 / m
    if var1 <= 0 or var2 <= 0:
        raise ValueError(f"{metric}: all off-diagonal correlations are equal in one array")
    return float(cov / np.sqrt(var1 * var2))


def correlation_matrix_distance(real, generated) -> float:
    """Root mean square difference between off-diagonal voxel correlations, in [0, 2].

    ``sqrt(sum_{i != j} (C1_ij - C2_ij)^2 / (v (v - 1)))``, computed without forming C1 or C2.
    """
    metric = "correlation_matrix_distance"
    real, generated = _validate_pair(real, generated, ("real", "generated"), metric, 2)
    _, _, q1, q2, p, m = _correlation_sums(real, generated, metric)
    return float(np.sqrt(max(q1 + q2 - 2.0 * p, 0.0) / m))


# --------------------------------------------------------------------------------------------
# Generative quality
# --------------------------------------------------------------------------------------------
def fit_pca(train, n_components: int, seed: int = 0) -> PCA:
    """Fit a scikit-learn PCA on ``train`` (n_samples, n_voxels).

    ``n_components`` is capped at ``min(n_samples - 1, n_voxels)`` (the rank of centred data);
    the fitted object's ``n_components_`` says how many were kept. Use ``.transform`` for
    features and ``.inverse_transform`` to go back to voxels.
    """
    train = validate_samples(train, "train", "fit_pca", min_samples=2)
    if n_components < 1:
        raise ValueError(f"fit_pca: n_components must be >= 1, got {n_components}")
    n = min(n_components, train.shape[0] - 1, train.shape[1])
    return PCA(n_components=n, random_state=seed).fit(train)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance matrix (negative rounding-error eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(real_feats, gen_feats) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula).

    ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` with sample covariances (ddof=1).
    ``tr((S1 S2)^(1/2))`` is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix ``S1^(1/2) S2 S1^(1/2)``, which has the same spectrum as ``S1 S2``. Unlike
    ``scipy.linalg.sqrtm(S1 @ S2)`` (pytorch-fid), it stays real and accurate for the rank-deficient,
    ill-conditioned covariances of small held-out sets.
    """
    real_feats, gen_feats = _validate_pair(
        real_feats, gen_feats, ("real_feats", "gen_feats"), "frechet_distance", 2
    )
    mu1, mu2 = real_feats.mean(axis=0), gen_feats.mean(axis=0)
    s1 = np.atleast_2d(np.cov(real_feats, rowvar=False))
    s2 = np.atleast_2d(np.cov(gen_feats, rowvar=False))
    root1 = _psd_sqrt(s1)
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, shape (len(a), len(b)), clipped at 0 against rounding."""
    d = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def median_pairwise_distance(x) -> float:
    """Median Euclidean distance over distinct pairs of rows of ``x`` (the median heuristic)."""
    x = validate_samples(x, "x", "median_pairwise_distance", min_samples=2)
    iu = np.triu_indices(x.shape[0], k=1)
    return float(np.median(np.sqrt(_sq_dists(x, x)[iu])))


def mmd_rbf(x, y, bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy with a Gaussian kernel (Gretton et al. 2012).

    ``k(a, b) = exp(-||a - b||^2 / (2 bandwidth^2))`` and, from Gretton et al. (2012), eq. 3,
    ``MMD_u^2 = mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j)``.
    The unbiased estimate is 0 in expectation for equal distributions and can be slightly
    negative. ``bandwidth=None`` uses the median heuristic: the median pairwise distance of the
    pooled samples; pass a fixed bandwidth to compare several generators on one scale.
    Memory is O((n_x + n_y)^2): use low-dimensional features (e.g. PCA scores).
    """
    x, y = _validate_pair(x, y, ("x", "y"), "mmd_rbf", 2)
    if bandwidth is None:
        bandwidth = median_pairwise_distance(np.concatenate([x, y]))
    if not bandwidth > 0:
        raise ValueError(f"mmd_rbf: bandwidth must be > 0, got {bandwidth}")
    gamma = 1.0 / (2.0 * bandwidth**2)
    n, m = x.shape[0], y.shape[0]
    k_xx = np.exp(-gamma * _sq_dists(x, x))
    k_yy = np.exp(-gamma * _sq_dists(y, y))
    k_xy = np.exp(-gamma * _sq_dists(x, y))
    # Diagonals are exp(0) = 1: drop them for the unbiased within-set means.
    term_xx = (k_xx.sum() - n) / (n * (n - 1))
    term_yy = (k_yy.sum() - m) / (m * (m - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def c2st_auc(real, generated, *, cv: int = 5, seed: int = 0) -> float:
    """Classifier two-sample test: cross-validated ROC-AUC of telling generated from real.

    Classes are balanced by subsampling the larger set (seeded) to the size of the smaller; a
    standardise + logistic-regression classifier is scored with stratified ``cv``-fold
    cross-validation and the fold AUCs are averaged. 0.5 means indistinguishable, 1.0 perfectly
    separable. Pass low-dimensional features (e.g. scores of a PCA fitted on separate training
    data) when samples are few compared with voxels.
    """
    real, generated = _validate_pair(real, generated, ("real", "generated"), "c2st_auc", cv)
    if cv < 2:
        raise ValueError(f"c2st_auc: cv must be >= 2, got {cv}")
    rng = np.random.default_rng(seed)
    n = min(real.shape[0], generated.shape[0])
    real = real[rng.choice(real.shape[0], n, replace=False)]
    generated = generated[rng.choice(generated.shape[0], n, replace=False)]
    x = np.concatenate([real, generated])
    y = np.concatenate([np.zeros(n), np.ones(n)])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, x, y, cv=folds, scoring="roc_auc").mean())


def _kth_neighbour_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of x to its k-th nearest other row, shape (len(x),)."""
    radii = np.empty(x.shape[0])
    for start in range(0, x.shape[0], _CHUNK):
        d = _sq_dists(x[start : start + _CHUNK], x)  # (chunk, n); includes self at distance 0
        radii[start : start + _CHUNK] = np.sqrt(np.partition(d, k, axis=1)[:, k])
    return radii


def _share_inside_balls(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Fraction of queries within ``radii[i]`` of at least one ``centres[i]``."""
    inside = np.empty(queries.shape[0], dtype=bool)
    for start in range(0, queries.shape[0], _CHUNK):
        d = _sq_dists(queries[start : start + _CHUNK], centres)  # (chunk, n_centres)
        inside[start : start + _CHUNK] = (d <= radii[None, :] ** 2).any(axis=1)
    return float(inside.mean())


def knn_precision_recall(real, generated, k: int = 5) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    The real manifold is the union of balls around each real sample with radius its distance to
    its k-th nearest real neighbour; likewise for generated samples. Precision is the share of
    generated samples inside the real manifold (fidelity); recall is the share of real samples
    inside the generated manifold (coverage). Returns ``{"precision": ..., "recall": ...}``.
    """
    real, generated = _validate_pair(
        real, generated, ("real", "generated"), "knn_precision_recall", k + 1
    )
    if k < 1:
        raise ValueError(f"knn_precision_recall: k must be >= 1, got {k}")
    real_radii = _kth_neighbour_radius(real, k)
    gen_radii = _kth_neighbour_radius(generated, k)
    return {
        "precision": _share_inside_balls(generated, real, real_radii),
        "recall": _share_inside_balls(real, generated, gen_radii),
    }


def total_variance(x) -> float:
    """Sum of per-voxel variances (ddof=1) of ``x`` (n_samples, n_voxels)."""
    x = validate_samples(x, "x", "total_variance", min_samples=2)
    return float(x.var(axis=0, ddof=1).sum())


def dispersion_ratio(samples, train) -> float:
    """Total variance of ``samples`` divided by total variance of ``train``.

    Total variance is the sum of per-voxel variances (ddof=1), see :func:`total_variance`.
    1 matches the training spread; below 1 the generator shrinks towards the mean, above 1 it
    is over-dispersed.
    """
    samples, train = _validate_pair(samples, train, ("samples", "train"), "dispersion_ratio", 2)
    total_train = total_variance(train)
    if total_train == 0:
        raise ValueError("dispersion_ratio: train has zero variance in every voxel")
    return total_variance(samples) / total_train


# --------------------------------------------------------------------------------------------
# Memorisation
# --------------------------------------------------------------------------------------------
def dcr(reference, queries) -> np.ndarray:
    """Distance to closest record: Euclidean distance from each query to its nearest reference.

    Shape ``(n_queries,)``; computed in blocks of queries, so memory is O(block * n_reference).
    """
    reference, queries = _validate_pair(reference, queries, ("reference", "queries"), "dcr", 1)
    out = np.empty(queries.shape[0])
    for start in range(0, queries.shape[0], _CHUNK):
        d = _sq_dists(queries[start : start + _CHUNK], reference)
        out[start : start + _CHUNK] = np.sqrt(d.min(axis=1))
    return out


def memorisation_summary(train, generated, heldout) -> dict[str, float]:
    """Compare how close generated and real held-out samples lie to the training set.

    Returns
    -------
    dict
        ``dcr_median_generated`` and ``dcr_median_heldout``: median distance to the closest
        training sample; ``dcr_ratio``: their ratio (about 1 for a generator as far from the
        training set as new real data; well below 1 suggests copying); and
        ``share_closer_than_heldout``: the share of generated samples whose DCR is below the
        smallest held-out DCR (closer to the training set than any real new sample is).
    """
    metric = "memorisation_summary"
    train = validate_samples(train, "train", metric)
    generated, heldout = _validate_pair(generated, heldout, ("generated", "heldout"), metric)
    if train.shape[1] != generated.shape[1]:
        raise ValueError(
            f"{metric}: train has {train.shape[1]} voxels but generated has {generated.shape[1]}"
        )
    d_gen, d_held = dcr(train, generated), dcr(train, heldout)
    med_gen, med_held = float(np.median(d_gen)), float(np.median(d_held))
    return {
        "dcr_median_generated": med_gen,
        "dcr_median_heldout": med_held,
        "dcr_ratio": med_gen / med_held if med_held > 0 else float("nan"),
        "share_closer_than_heldout": float(np.mean(d_gen < d_held.min())),
    }


# --------------------------------------------------------------------------------------------
# Utility
# --------------------------------------------------------------------------------------------
def tstr_accuracy(train_x, train_y, test_x, test_y, seed: int = 0) -> float:
    """Accuracy on real test data of a classifier trained on ``(train_x, train_y)``.

    Train on synthetic, test on real (TSTR) with generated labelled samples as ``train_x``;
    the same call with the real training split gives TRTR, the reference TSTR is compared with.
    The classifier is standardise + logistic regression (L2, C=1).
    """
    metric = "tstr_accuracy"
    train_x, test_x = _validate_pair(train_x, test_x, ("train_x", "test_x"), metric, 2)
    train_y = validate_labels(train_y, train_x.shape[0], "train_y", metric)
    test_y = validate_labels(test_y, test_x.shape[0], "test_y", metric)
    if np.unique(train_y).size < 2:
        raise ValueError(f"{metric}: train_y must hold at least 2 classes, got {np.unique(train_y)}")
    clf = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)
    ).fit(train_x, train_y)
    return float(np.mean(clf.predict(test_x) == test_y))


# --------------------------------------------------------------------------------------------
# Uncertainty
# --------------------------------------------------------------------------------------------
def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    paired: bool = False,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of ``metric_fn(*arrays)``.

    Each replicate resamples the rows of every array with replacement, independently per array
    (two samples: e.g. held-out and generated), or with the same indices when ``paired``
    (e.g. originals and their reconstructions). Fix arrays that should not be resampled (the
    training set) with a closure or ``functools.partial``.

    Returns
    -------
    (point, low, high)
        The metric on the original arrays and the ``alpha / 2`` and ``1 - alpha / 2``
        percentiles of the replicates.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array to resample")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"bootstrap_ci: alpha must be in (0, 1), got {alpha}")
    arrays = [np.asarray(a) for a in arrays]
    lengths = {a.shape[0] for a in arrays}
    if paired and len(lengths) != 1:
        raise ValueError(f"bootstrap_ci: paired arrays need equal row counts, got {sorted(lengths)}")
    rng = np.random.default_rng(seed)
    point = float(metric_fn(*arrays))
    replicates = np.empty(n_boot)
    for b in range(n_boot):
        if paired:
            idx = rng.integers(0, arrays[0].shape[0], arrays[0].shape[0])
            resampled = [a[idx] for a in arrays]
        else:
            resampled = [a[rng.integers(0, a.shape[0], a.shape[0])] for a in arrays]
        replicates[b] = metric_fn(*resampled)
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return point, float(low), float(high)
