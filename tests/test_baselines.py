"""Tests for fmri_diffusers.baselines."""

import numpy as np
import pytest

from fmri_diffusers.baselines import PCAGaussian, PCAReconstruction, split_heldout


def test_pca_reconstruction_is_orthogonal_projection(rng):
    train = rng.normal(size=(50, 20)) @ rng.normal(size=(20, 20))
    test = rng.normal(size=(10, 20)) @ rng.normal(size=(20, 20))
    recon = PCAReconstruction(n_components=4).fit(train).reconstruct(test)
    # Independent reference: project onto the top-4 right singular vectors of centred train.
    mean = train.mean(axis=0)
    vt = np.linalg.svd(train - mean, full_matrices=False)[2][:4]
    np.testing.assert_allclose(recon, mean + (test - mean) @ vt.T @ vt, atol=1e-8)


def test_pca_reconstruction_exact_in_subspace(rng):
    basis = rng.normal(size=(3, 15))
    train = rng.normal(size=(40, 3)) @ basis + 5.0
    test = rng.normal(size=(6, 3)) @ basis + 5.0
    np.testing.assert_allclose(PCAReconstruction(3).fit(train).reconstruct(test), test, atol=1e-8)
    assert np.abs(PCAReconstruction(2).fit(train).reconstruct(test) - test).max() > 0.1


def test_pca_reconstruction_caps_and_validates(rng):
    model = PCAReconstruction(n_components=64).fit(rng.normal(size=(10, 30)))
    assert model.n_components_ == 9
    with pytest.raises(ValueError, match=r"expected x of shape \(n_samples, 30\), got \(2, 29\)"):
        model.reconstruct(np.zeros((2, 29)))
    with pytest.raises(ValueError, match="called before fit"):
        PCAReconstruction(3).reconstruct(np.zeros((2, 29)))


def test_pca_gaussian_matches_training_moments(rng):
    train = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 12)) + np.arange(12)
    model = PCAGaussian(n_components=6).fit(train)
    samples = model.sample(20_000, seed=1)
    assert samples.shape == (20_000, 12) and samples.dtype == np.float32
    # Train is rank 6, so 6 components keep all of it: the samples' moments are the train ones.
    np.testing.assert_allclose(samples.mean(0), train.mean(0), atol=0.1)
    np.testing.assert_allclose(np.cov(samples, rowvar=False), np.cov(train, rowvar=False), atol=0.25 * np.abs(np.cov(train, rowvar=False)).max())
    np.testing.assert_array_equal(model.sample(5, seed=3), model.sample(5, seed=3))


def test_pca_gaussian_class_conditional(rng):
    labels = np.repeat([1, 2], 60)
    train = rng.normal(size=(120, 8)) + 4.0 * (labels == 2)[:, None]
    model = PCAGaussian(n_components=5).fit(train, labels=labels)
    want = np.array([2, 1, 2, 2] * 500)
    samples = model.sample(want.size, seed=0, labels=want)
    for label in (1, 2):
        class_mean = samples[want == label].mean(0)
        np.testing.assert_allclose(class_mean, train[labels == label].mean(0), atol=0.5)
    with pytest.raises(ValueError, match=r"labels \[3\] were not seen in fit; fitted labels: \[1, 2\]"):
        model.sample(2, labels=np.array([1, 3]))
    with pytest.raises(ValueError, match=r"expected labels of shape \(3,\), got shape \(2,\)"):
        model.sample(3, labels=np.array([1, 2]))
    with pytest.raises(ValueError, match="label 7 has 1 training sample"):
        PCAGaussian(3).fit(train[:3], labels=np.array([1, 1, 7]))


def test_split_heldout(rng):
    heldout = np.arange(22, dtype=float).reshape(11, 2)
    reference, ceiling = split_heldout(heldout, seed=0)
    assert reference.shape == (5, 2) and ceiling.shape == (6, 2)
    np.testing.assert_array_equal(np.sort(np.concatenate([reference, ceiling])[:, 0]), heldout[:, 0])
    labels = np.array([0] * 6 + [1] * 5)
    ref, ceil, ref_y, ceil_y = split_heldout(heldout, seed=0, labels=labels)
    assert np.bincount(ref_y).tolist() == [3, 3] and np.bincount(ceil_y).tolist() == [3, 2]
    # The labels travel with their rows (row value 2 * i belongs to label labels[i]).
    np.testing.assert_array_equal(labels[(ref[:, 0] / 2).astype(int)], ref_y)
    # Two odd classes (5 + 5, as digit69's test set): the halves are 5 and 5, not 4 and 6.
    labels = np.array([0] * 5 + [1] * 5)
    _, _, ref_y, ceil_y = split_heldout(heldout[:10], seed=0, labels=labels)
    assert len(ref_y) == 5 and len(ceil_y) == 5


def test_pca_gaussian_with_residual_noise_restores_the_left_out_variance(rng):
    # 3 factors + independent noise: 3 components keep the factors, the noise is the residual.
    train = rng.normal(size=(2000, 3)) @ rng.normal(size=(3, 12)) + rng.normal(0, 0.5, size=(2000, 12))
    plain = PCAGaussian(3).fit(train).sample(4000, seed=1)
    noisy_model = PCAGaussian(3, residual_noise=True).fit(train)
    noisy = noisy_model.sample(4000, seed=1)
    residual = train - noisy_model.pca_.inverse_transform(noisy_model.pca_.transform(train))
    np.testing.assert_allclose(noisy_model.noise_std_, residual.std(axis=0))
    # Without the noise, samples miss the residual variance; with it, the total variance matches train's.
    left_out = residual.var(axis=0).sum()
    assert plain.var(axis=0).sum() == pytest.approx(train.var(axis=0).sum() - left_out, rel=0.05)
    assert noisy.var(axis=0).sum() == pytest.approx(train.var(axis=0).sum(), rel=0.05)
