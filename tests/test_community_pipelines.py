"""The single-file pipelines under pipelines/ load through diffusers' custom_pipeline= and do what they say."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline

from fmri_diffusers import FMRIVAE, FMRIDenoiser, FMRILatentDiffusionPipeline

REPO_ROOT = Path(__file__).resolve().parents[1]

N_VOXELS = 12


@pytest.fixture
def saved_pipeline(tmp_path):
    torch.manual_seed(0)
    vae = FMRIVAE(n_voxels=N_VOXELS, latent_dim=3, hidden_dims=[8]).eval()
    vae.set_voxel_statistics(torch.full((N_VOXELS,), 100.0), torch.full((N_VOXELS,), 2.0))
    denoiser = FMRIDenoiser(latent_dim=3, hidden_dims=[8], layers_per_block=1, time_embed_dim=8)
    FMRILatentDiffusionPipeline(vae, denoiser, DDPMScheduler(clip_sample=False)).save_pretrained(tmp_path)
    return tmp_path


def test_interpolation_pipeline_loads_and_hits_both_ends(saved_pipeline):
    pipe = DiffusionPipeline.from_pretrained(
        saved_pipeline, custom_pipeline=str(REPO_ROOT / "pipelines" / "fmri_latent_interpolation.py"),
        trust_remote_code=True,
    )
    assert type(pipe).__name__ == "FMRILatentInterpolationPipeline"
    rng = np.random.default_rng(0)
    start, end = rng.normal(100, 2, size=(2, N_VOXELS)).astype(np.float32)
    out = pipe(start, end, num_points=5)
    assert out.samples.shape == (5, N_VOXELS)
    np.testing.assert_allclose(out.weights, [0, 0.25, 0.5, 0.75, 1])
    # The ends of the path are the VAE round trips of start and end.
    ends = FMRILatentDiffusionPipeline.from_pretrained(saved_pipeline).reconstruct(np.stack([start, end])).samples
    np.testing.assert_allclose(out.samples[[0, -1]], ends, rtol=1e-5)
    with pytest.raises(ValueError, match=r"start and end must each have shape \(12,\)"):
        pipe(start[:5], end)
    with pytest.raises(ValueError, match="num_points must be >= 2"):
        pipe(start, end, num_points=1)
