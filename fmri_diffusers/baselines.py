"""Linear baselines a VAE and a latent diffusion model must beat.

- :class:`PCAReconstruction`: project onto the top principal components of the training data
  and back; the linear auto-encoder at the VAE's latent size.
- :class:`PCAGaussian`: a Gaussian (optionally one per class label) in that PCA space, decoded
  to voxels; the simplest generator.
- :func:`split_heldout`: split held-out data in two halves so that one half, scored as if it
  were generated against the other, gives the real-vs-real ceiling of every metric.

All arrays are ``(n_samples, n_voxels)``.
"""

from __future__ import annotations

import numpy as np

from .metrics import validate_samples, validate_labels, fit_pca


class PCAReconstruction:
    """Reconstruct patterns from their top ``n_components`` principal components.

    ``n_components`` is capped at ``n_train - 1`` (and ``n_voxels``); ``n_components_`` says
    how many were kept after :meth:`fit`.

    Examples
    --------
    >>> pca = PCAReconstruction(n_components=16).fit(train)  # doctest: +SKIP
    >>> recon = pca.reconstruct(test)  # (n_test, n_voxels)  # doctest: +SKIP
    """

    def __init__(self, n_components: int, seed: int = 0):
        self.n_components = n_components
        self.seed = seed
        self.pca_ = None

    def fit(self, train) -> PCAReconstruction:
        self.pca_ = fit_pca(train, self.n_components, seed=self.seed)
        self.n_components_ = int(self.pca_.n_components_)
        return self

    def reconstruct(self, x) -> np.ndarray:
        """Project ``x`` onto the components and back, shape ``(n_samples, n_voxels)``."""
        if self.pca_ is None:
            raise ValueError("PCAReconstruction.reconstruct called before fit")
        x = validate_samples(x, "x", "PCAReconstruction.reconstruct")
        if x.shape[1] != self.pca_.n_features_in_:
            raise ValueError(
                f"PCAReconstruction.reconstruct: expected x of shape (n_samples, "
                f"{self.pca_.n_features_in_}), got {x.shape}"
            )
        return self.pca_.inverse_transform(self.pca_.transform(x))


class PCAGaussian:
    """Gaussian generator in the PCA space of the training data.

    :meth:`fit` fits a PCA with ``n_components`` (capped at ``n_train - 1``), then a Gaussian
    (mean and full covariance, ddof=1) of the PCA scores of all training samples, and, when
    ``labels`` are given, one Gaussian per label. :meth:`sample` draws scores and maps them back
    to voxels. With ``residual_noise=False`` samples lie in the PCA subspace (the variance the
    components leave out is not modelled); with ``True`` each voxel also gets independent Gaussian
    noise with the std of its training residual, as the pipeline's VAE adds its own residual noise
    (a probabilistic-PCA / factor-analysis-like generator: the stronger baseline).
    """

    def __init__(self, n_components: int, seed: int = 0, residual_noise: bool = False):
        self.n_components = n_components
        self.seed = seed
        self.residual_noise = residual_noise
        self.pca_ = None

    @staticmethod
    def _gaussian(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean (k,) and a square root (k, k) of the covariance of scores (n, k)."""
        cov = np.atleast_2d(np.cov(scores, rowvar=False))
        # Symmetric square root via eigh: works for singular covariances (fewer samples than k).
        eigval, eigvec = np.linalg.eigh(cov)
        return scores.mean(axis=0), eigvec * np.sqrt(np.clip(eigval, 0.0, None))

    def fit(self, train, labels=None) -> PCAGaussian:
        train = validate_samples(train, "train", "PCAGaussian.fit", min_samples=2)
        self.pca_ = fit_pca(train, self.n_components, seed=self.seed)
        self.n_components_ = int(self.pca_.n_components_)
        scores = self.pca_.transform(train)  # (n_train, k)
        self.gaussian_ = self._gaussian(scores)
        # Per-voxel std of what the components leave out (n_voxels,); 0 without residual noise.
        residual = train - self.pca_.inverse_transform(scores)
        self.noise_std_ = residual.std(axis=0) if self.residual_noise else np.zeros(train.shape[1])
        self.class_gaussians_ = {}
        if labels is not None:
            labels = validate_labels(labels, train.shape[0], "labels", "PCAGaussian.fit")
            for label in np.unique(labels).tolist():
                members = scores[labels == label]
                if members.shape[0] < 2:
                    raise ValueError(
                        f"PCAGaussian.fit: label {label!r} has {members.shape[0]} training sample; "
                        "a class Gaussian needs at least 2"
                    )
                self.class_gaussians_[label] = self._gaussian(members)
        return self

    def sample(self, n: int, seed: int = 0, labels=None) -> np.ndarray:
        """Draw ``n`` patterns, shape ``(n, n_voxels)`` float32.

        With ``labels`` (shape ``(n,)``), sample ``i`` comes from the Gaussian of class
        ``labels[i]`` (the model must have been fitted with labels); otherwise from the
        Gaussian of all training data.
        """
        if self.pca_ is None:
            raise ValueError("PCAGaussian.sample called before fit")
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal((n, self.n_components_))  # (n, k)
        if labels is None:
            mean, root = self.gaussian_
            scores = mean + noise @ root.T
        else:
            labels = validate_labels(labels, n, "labels", "PCAGaussian.sample")
            unknown = set(np.unique(labels).tolist()) - set(self.class_gaussians_)
            if unknown:
                raise ValueError(
                    f"PCAGaussian.sample: labels {sorted(unknown)} were not seen in fit; "
                    f"fitted labels: {sorted(self.class_gaussians_)}"
                )
            scores = np.empty_like(noise)
            for label, (mean, root) in self.class_gaussians_.items():
                rows = labels == label
                scores[rows] = mean + noise[rows] @ root.T
        samples = self.pca_.inverse_transform(scores)
        if self.residual_noise:
            samples = samples + rng.standard_normal(samples.shape) * self.noise_std_
        return samples.astype(np.float32)


def split_heldout(heldout, seed: int = 0, labels=None):
    """Split held-out rows at random into a reference half and a ceiling half.

    Score every generator against ``reference`` and pass ``ceiling`` as one more generated set
    (e.g. ``"real_vs_real"``): its scores are what real data achieve at that sample size, the
    ceiling for every metric. With ``labels`` (shape ``(n,)``) the split is stratified by label
    and the labels of each half are returned too.

    Returns
    -------
    (reference, ceiling) or (reference, ceiling, reference_labels, ceiling_labels)
    """
    heldout = validate_samples(heldout, "heldout", "split_heldout", min_samples=2)
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(heldout.shape[0])
        half = heldout.shape[0] // 2
        return heldout[order[:half]], heldout[order[half:]]
    labels = validate_labels(labels, heldout.shape[0], "labels", "split_heldout")
    first, second = [], []
    for i, label in enumerate(np.unique(labels)):
        rows = rng.permutation(np.flatnonzero(labels == label))
        # Odd class sizes give their extra row to alternating halves, so the halves stay balanced
        # (5 + 5 of each class would otherwise give 4 + 4 vs 6 + 6).
        cut = rows.size // 2 + (rows.size % 2) * (i % 2)
        first.append(rows[:cut])
        second.append(rows[cut:])
    first, second = np.concatenate(first), np.concatenate(second)
    return heldout[first], heldout[second], labels[first], labels[second]
