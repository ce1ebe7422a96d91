"""Community pipeline: interpolate between real fMRI patterns through the latent space of a trained model.

Single file in the diffusers community style: load it on top of any pipeline folder written by
``train_ldm.py`` without subclassing anything yourself:

    >>> from diffusers import DiffusionPipeline
    >>> pipe = DiffusionPipeline.from_pretrained(
    ...     "outputs/ldm", custom_pipeline="pipelines/fmri_latent_interpolation.py", trust_remote_code=True
    ... )
    >>> path = pipe(start, end, num_points=9).samples   # (9, n_voxels), in the data's units

The components (``FMRIVAE``, ``FMRIDenoiser``) come from the installed ``fmri_diffusers`` package.
"""

from dataclasses import dataclass

import numpy as np
import torch

from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput


@dataclass
class FMRIInterpolationOutput(BaseOutput):
    """samples: (num_points, n_voxels) float32 patterns from `start` to `end`; weights: (num_points,) in [0, 1]."""

    samples: np.ndarray
    weights: np.ndarray


def slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of (D,) vectors for weights (N,) -> (N, D); linear when a and b are parallel.

    Gaussian latents concentrate near a sphere; linear mixing shrinks their norm, slerp keeps it.
    """
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    w = w[:, None]
    if theta.abs() < 1e-4:
        return (1 - w) * a + w * b
    return (torch.sin((1 - w) * theta) * a + torch.sin(w * theta) * b) / torch.sin(theta)


class FMRILatentInterpolationPipeline(DiffusionPipeline):
    """Encode two patterns with the VAE, walk between their latents, decode each point."""

    def __init__(self, vae, denoiser, scheduler):
        super().__init__()
        self.register_modules(vae=vae, denoiser=denoiser, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, start, end, num_points: int = 8, method: str = "slerp", return_dict: bool = True):
        """
        Args:
            start, end (`np.ndarray` or `torch.Tensor`): One pattern each, shape (n_voxels,), in the data's units.
            num_points (`int`, defaults to 8): Points on the path, both ends included (>= 2).
            method (`str`, defaults to `"slerp"`): `"slerp"` or `"linear"`.
        """
        n_voxels = self.vae.config.n_voxels
        if num_points < 2:
            raise ValueError(f"num_points must be >= 2, got {num_points}")
        if method not in ("slerp", "linear"):
            raise ValueError(f"method must be 'slerp' or 'linear', got {method!r}")
        if np.shape(start) != (n_voxels,) or np.shape(end) != (n_voxels,):
            raise ValueError(f"start and end must each have shape ({n_voxels},), got {tuple(np.shape(start))} "
                             f"and {tuple(np.shape(end))}")
        ends = torch.stack([torch.as_tensor(np.asarray(p), dtype=torch.float32) for p in (start, end)])
        # 1. encode both ends to posterior means
        z = self.vae.encode(self.vae.normalize(ends.to(self.device)).to(self.vae.dtype)).latent_dist.mode().float()
        # 2. walk between them
        w = torch.linspace(0, 1, num_points, device=z.device)
        path = slerp(z[0], z[1], w) if method == "slerp" else (1 - w[:, None]) * z[0] + w[:, None] * z[1]
        # 3. decode to the data's units
        samples = self.vae.denormalize(self.vae.decode(path.to(self.vae.dtype)).sample).cpu().numpy()
        weights = w.cpu().numpy()
        return FMRIInterpolationOutput(samples=samples, weights=weights) if return_dict else (samples, weights)
