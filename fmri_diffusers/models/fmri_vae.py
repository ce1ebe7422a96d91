"""A variational autoencoder for 1-D fMRI patterns (one vector of voxel / vertex values per sample).

The VAE works in *model space*: voxels z-scored with the statistics of the training split. Those
statistics travel with the checkpoint as fp32 buffers (``voxel_mean``, ``voxel_std``,
``voxel_mask``), so :meth:`FMRIVAE.normalize` and :meth:`FMRIVAE.denormalize` map between the
user's units and model space wherever the model is loaded.
"""

from dataclasses import dataclass

import torch
from torch import nn

from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .modeling_utils import StrictLoadingMixin

_NORMS = ("batch", "layer", "none")


class GaussianPosterior:
    """Diagonal Gaussian q(z | x) over ``(batch, latent_dim)`` latents.

    diffusers' ``DiagonalGaussianDistribution`` sums its KL over dims (1, 2, 3) and fails on 2-D
    latents; this one reduces over the latent dimension only.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean = mean  # (B, D)
        # Same clamp as diffusers' VAEs: keeps exp() finite early in training.
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        # Reparameterisation trick: z = mu + sigma * eps keeps the sample differentiable in mu, sigma.
        eps = randn_tensor(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per sample, shape (B,): 0.5 * sum(mu^2 + var - 1 - log var)."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=1)


@dataclass
class FMRIEncoderOutput(BaseOutput):
    """latent_dist: the posterior q(z | x)."""

    latent_dist: GaussianPosterior


@dataclass
class FMRIDecoderOutput(BaseOutput):
    """sample: decoded patterns in model space, shape (batch, n_voxels)."""

    sample: torch.Tensor


@dataclass
class FMRIVAEOutput(BaseOutput):
    """sample: reconstruction in model space (B, n_voxels); latent_dist: the posterior, for the KL term."""

    sample: torch.Tensor
    # A default lets accelerate's mixed-precision output conversion rebuild the dataclass from a dict.
    latent_dist: GaussianPosterior | None = None


def _norm_layer(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


def _mlp(widths: list[int], norm: str, dropout: float) -> nn.Sequential:
    """Linear -> norm -> SiLU -> dropout for each consecutive pair of widths."""
    layers = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(w_in, w_out), _norm_layer(norm, w_out), nn.SiLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class VoxelStatistics(nn.Module):
    """Per-voxel training statistics, kept in fp32 whatever dtype the rest of the model is cast to.

    fp16 cannot hold a raw BOLD mean of ~1000 to better than 0.5, so ``half()`` / ``to(dtype)`` must
    not touch these buffers; ``FMRIVAE._keep_in_fp32_modules`` does the same for ``from_pretrained``.
    """

    def __init__(self, n_voxels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_voxels))
        self.register_buffer("std", torch.ones(n_voxels))
        # 1.0 = voxel kept, 0.0 = masked out (constant or non-finite in the training split).
        self.register_buffer("mask", torch.ones(n_voxels))
        # Per-voxel std of what the decoder mean leaves unexplained (model space): p(x | z) = N(decode(z), noise_std^2).
        self.register_buffer("noise_std", torch.zeros(n_voxels))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():
            if buf is not None and buf.dtype != torch.float32:
                self._buffers[name] = buf.float()
        return self


class FMRIVAE(StrictLoadingMixin, ModelMixin, ConfigMixin):
    r"""MLP variational autoencoder mapping fMRI patterns ``(batch, n_voxels)`` to ``(batch, latent_dim)``.

    Parameters:
        n_voxels (`int`): Length of each input pattern (voxels or vertices).
        latent_dim (`int`, defaults to 64): Size of the latent vector.
        hidden_dims (`list[int]`, defaults to `[512, 256]`): Encoder widths; the decoder mirrors them.
        norm (`str`, defaults to `"layer"`): `"batch"`, `"layer"` or `"none"` after each hidden Linear.
        dropout (`float`, defaults to 0.1): Dropout after each hidden layer.
        scaling_factor (`float`, defaults to 1.0): Multiplies posterior samples to give diffusion latents of
            unit variance; set to ``1 / std`` of the training latents after training (as Stable
            Diffusion's VAE). The pipeline divides by it before decoding.
    """

    _keep_in_fp32_modules = ["voxel_stats"]

    @register_to_config
    def __init__(
        self,
        n_voxels: int,
        latent_dim: int = 64,
        hidden_dims: tuple[int, ...] = (512, 256),
        norm: str = "layer",
        dropout: float = 0.1,
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        if n_voxels < 1 or latent_dim < 1:
            raise ValueError(f"n_voxels and latent_dim must be >= 1, got n_voxels={n_voxels}, latent_dim={latent_dim}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        hidden_dims = list(hidden_dims)

        self.voxel_stats = VoxelStatistics(n_voxels)
        self.encoder = _mlp([n_voxels, *hidden_dims], norm, dropout)
        # One Linear gives mean and log-variance side by side: (B, 2 * latent_dim).
        self.to_moments = nn.Linear(hidden_dims[-1] if hidden_dims else n_voxels, 2 * latent_dim)
        self.decoder = _mlp([latent_dim, *hidden_dims[::-1]], norm, dropout)
        self.to_voxels = nn.Linear(hidden_dims[0] if hidden_dims else latent_dim, n_voxels)

    # -- user space <-> model space -------------------------------------------------------------

    @torch.no_grad()
    def set_voxel_statistics(self, mean, std, mask=None) -> None:
        """Store the training split's per-voxel mean, std and kept-voxel mask (each ``(n_voxels,)``)."""
        n = self.config.n_voxels
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        mask = torch.ones(n) if mask is None else torch.as_tensor(mask, dtype=torch.float32)
        for name, value in (("mean", mean), ("std", std), ("mask", mask)):
            if value.shape != (n,):
                raise ValueError(f"voxel {name} must have shape ({n},), got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"voxel {name} holds {(~torch.isfinite(value)).sum().item()} non-finite values")
        if (std[mask > 0] <= 0).any():
            raise ValueError("voxel std must be > 0 for every kept voxel; mask constant voxels out instead")
        stats = self.voxel_stats
        stats.mean.copy_(mean)
        stats.std.copy_(torch.where(mask > 0, std, torch.ones_like(std)))
        stats.mask.copy_((mask > 0).float())

    @torch.no_grad()
    def set_noise_std(self, noise_std) -> None:
        """Store the per-voxel observation-noise std ``(n_voxels,)`` in model space (0 for masked-out voxels).

        ``train_vae.py`` sets it to the root-mean-square residual of posterior-mean reconstructions on the
        validation split: fMRI patterns are mostly noise, and a decoder mean alone is far smoother than data.
        """
        noise_std = torch.as_tensor(noise_std, dtype=torch.float32)
        n = self.config.n_voxels
        if noise_std.shape != (n,):
            raise ValueError(f"noise_std must have shape ({n},), got {tuple(noise_std.shape)}")
        if not torch.isfinite(noise_std).all() or (noise_std < 0).any():
            raise ValueError("noise_std must be finite and >= 0 for every voxel")
        self.voxel_stats.noise_std.copy_(noise_std * self.voxel_stats.mask)

    def sample_observation(self, mean: torch.Tensor, generator=None) -> torch.Tensor:
        """Draw x ~ N(mean, noise_std^2) per voxel, in model space; ``mean`` is a decoder output (B, n_voxels)."""
        self._check_voxels(mean, "mean")
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
        return mean.float() + self.voxel_stats.noise_std * noise

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """User units -> model space: ``(x - mean) / std``; masked-out voxels become 0 (NaN there is ignored)."""
        self._check_voxels(x, "x")
        stats = self.voxel_stats
        z = (x.float() - stats.mean) / stats.std
        return torch.where(stats.mask > 0, z, torch.zeros_like(z))

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Model space -> user units (fp32); masked-out voxels are filled with their training mean."""
        self._check_voxels(z, "z")
        stats = self.voxel_stats
        x = z.float() * stats.std + stats.mean
        return torch.where(stats.mask > 0, x, stats.mean.expand_as(x))

    def _check_voxels(self, x: torch.Tensor, name: str) -> None:
        if x.ndim != 2 or x.shape[1] != self.config.n_voxels:
            raise ValueError(f"Expected {name} of shape (n_samples, {self.config.n_voxels}), got {tuple(x.shape)}")

    # -- VAE -----------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> FMRIEncoderOutput | tuple[GaussianPosterior]:
        """Encode model-space patterns ``(B, n_voxels)`` into the posterior over ``(B, latent_dim)``."""
        self._check_voxels(x, "x")
        mean, logvar = self.to_moments(self.encoder(x)).chunk(2, dim=1)
        posterior = GaussianPosterior(mean, logvar)
        return FMRIEncoderOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> FMRIDecoderOutput | tuple[torch.Tensor]:
        """Decode latents ``(B, latent_dim)`` (unscaled: divide diffusion latents by ``scaling_factor`` first)."""
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"Expected z of shape (n_samples, {self.config.latent_dim}), got {tuple(z.shape)}")
        sample = self.to_voxels(self.decoder(z))
        return FMRIDecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> FMRIVAEOutput | tuple[torch.Tensor, GaussianPosterior]:
        """Model space in, model space out: ``(B, n_voxels) -> (B, n_voxels)`` plus the posterior."""
        # 1. encode
        posterior = self.encode(sample).latent_dist
        # 2. sample the latent (training) or take its mean (evaluation)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        # 3. decode
        dec = self.decode(z).sample
        return FMRIVAEOutput(sample=dec, latent_dist=posterior) if return_dict else (dec, posterior)
