"""Tests for fmri_diffusers.visualization: every function returns a Figure and writes a PNG."""

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest
from matplotlib.figure import Figure

from fmri_diffusers import visualization as viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def real(rng):
    return rng.normal(size=(12, 40)).astype(np.float32)


def _check(fig, path):
    assert isinstance(fig, Figure)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert plt.get_fignums() == []  # nothing registered with pyplot, so nothing leaks


def test_training_curves_from_records_and_mapping(tmp_path):
    records = [{"step": s, "name": n, "value": v} for s in range(5)
               for n, v in (("loss", 1.0 / (s + 1)), ("lr", 1e-3))]
    path = tmp_path / "sub" / "curves.png"
    fig = viz.plot_training_curves(records, path=path, log_y=True)
    _check(fig, path)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "lr"]
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    fig = viz.plot_training_curves({"loss": [(2, 0.5), (1, 1.0)]})
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), [1, 2])  # sorted by step
    with pytest.raises(ValueError, match=r"log record 0 lacks keys \['value'\]"):
        viz.plot_training_curves([{"step": 1, "name": "loss"}])


def test_reconstructions(tmp_path, real, rng):
    path = tmp_path / "recon.png"
    fig = viz.plot_reconstructions(real, real + 0.1 * rng.normal(size=real.shape), n_show=3, path=path)
    _check(fig, path)
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match=r"real has shape \(12, 40\), recon \(12, 39\)"):
        viz.plot_reconstructions(real, real[:, :-1])


def test_correlation_distributions(tmp_path, real, rng):
    path = tmp_path / "corr.png"
    recon = real + rng.normal(size=real.shape)
    recon[:, 0] = 0.0  # a constant voxel: undefined r, counted in the legend
    fig = viz.plot_correlation_distributions(real, {"vae": recon, "pca": real * 0.5}, path=path)
    _check(fig, path)
    assert "1 undefined" in fig.axes[0].get_legend().get_texts()[0].get_text()


@pytest.mark.parametrize("labels", [None, np.repeat(["s1", "s2"], 5)])
def test_latent_space_small_n(tmp_path, rng, labels):
    path = tmp_path / "latents.png"
    fig = viz.plot_latent_space(rng.normal(size=(10, 4)), labels=labels, path=path, label_name="subject")
    _check(fig, path)
    with pytest.raises(ValueError, match="plot_latent_space needs at least 4 samples in latents, got 3"):
        viz.plot_latent_space(rng.normal(size=(3, 4)))


def test_value_distributions_and_correlation_structure(tmp_path, real, rng):
    generated = {"model": rng.normal(size=(20, 40)), "pca_gaussian": rng.normal(size=(8, 40))}
    path = tmp_path / "values.png"
    _check(viz.plot_value_distributions(real, generated, path=path), path)
    path = tmp_path / "structure.png"
    fig = viz.plot_correlation_structure(real, generated, path=path, n_voxels=10)
    _check(fig, path)
    assert fig.axes[0].images[0].get_array().shape == (10, 10)
    bad = {"model": np.full((20, 40), np.nan)}
    with pytest.raises(ValueError, match="model contains 800 NaN"):
        viz.plot_value_distributions(real, bad)


def test_brain_maps(tmp_path, rng):
    images = [(title, nib.Nifti1Image(rng.normal(size=(8, 9, 7)).astype(np.float32), np.eye(4)))
              for title in ("real", "reconstructed", "generated")]
    path = tmp_path / "brain.png"
    _check(viz.plot_brain_maps(images, path=path, cut_coords=3), path)
    with pytest.raises(TypeError, match="image 'x' must be a 3-D nibabel image"):
        viz.plot_brain_maps([("x", np.zeros((3, 3, 3)))])
