from .fmri_denoiser import FMRIDenoiser, FMRIDenoiserOutput
from .fmri_vae import FMRIVAE, FMRIDecoderOutput, FMRIEncoderOutput, FMRIVAEOutput, GaussianPosterior

__all__ = [
    "FMRIDenoiser",
    "FMRIDenoiserOutput",
    "FMRIVAE",
    "FMRIDecoderOutput",
    "FMRIEncoderOutput",
    "FMRIVAEOutput",
    "GaussianPosterior",
]
