"""fmri-diffusers: latent diffusion models of fMRI activity patterns, built on Hugging Face diffusers."""

__version__ = "0.1.0"

from .models import FMRIVAE, FMRIDenoiser, GaussianPosterior
from .pipeline_fmri_ldm import FMRILatentDiffusionPipeline, FMRIPipelineOutput

__all__ = ["FMRIVAE", "FMRIDenoiser", "GaussianPosterior", "FMRILatentDiffusionPipeline", "FMRIPipelineOutput"]
