"""A residual-MLP "U-Net" that predicts noise (or v, or x0) for latent vectors of an fMRI VAE.

MLP-VAE latents have no spatial order, so convolutions (``UNet1DModel``) buy nothing; this model keeps
the U-Net's shape -- a down path, a middle block and an up path joined by skip connections -- with
Linear layers, and injects the timestep and the optional condition the way diffusers' ResNet blocks do.
"""

from dataclasses import dataclass

import torch
from torch import nn

from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils import BaseOutput

from .modeling_utils import StrictLoadingMixin


@dataclass
class FMRIDenoiserOutput(BaseOutput):
    """sample: the model's prediction (noise, v or x0, per the scheduler's ``prediction_type``), (B, latent_dim)."""

    sample: torch.Tensor


class ResidualBlock(nn.Module):
    """norm -> SiLU -> Linear, + time/condition embedding, norm -> SiLU -> dropout -> Linear, + skip."""

    def __init__(self, in_dim: int, out_dim: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim)
        self.linear1 = nn.Linear(in_dim, out_dim)
        self.emb_proj = nn.Linear(emb_dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(out_dim, out_dim)
        self.act = nn.SiLU()
        self.skip = nn.Linear(in_dim, out_dim) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.linear1(self.act(self.norm1(x)))  # (B, out_dim)
        h = h + self.emb_proj(self.act(emb))
        h = self.linear2(self.dropout(self.act(self.norm2(h))))
        return h + self.skip(x)


class FMRIDenoiser(StrictLoadingMixin, ModelMixin, ConfigMixin):
    r"""Residual MLP denoiser over ``(batch, latent_dim)`` latents with optional conditioning.

    Parameters:
        latent_dim (`int`): Size of the VAE latent.
        hidden_dims (`list[int]`, defaults to `[512, 256]`): Widths of the down path (the up path mirrors it).
        layers_per_block (`int`, defaults to 2): Residual blocks per width.
        time_embed_dim (`int`, defaults to 256): Width of the timestep (and condition) embedding.
        dropout (`float`, defaults to 0.0): Dropout inside the residual blocks.
        num_class_embeds (`int`, *optional*): Number of integer classes (stimulus labels, subjects). One extra,
            learned row is the "null" class used when the condition is dropped (classifier-free guidance).
        condition_dim (`int`, *optional*): Length of continuous condition vectors (e.g. stimulus features),
            projected into the embedding; a learned "null" vector replaces dropped conditions.
    """

    @register_to_config
    def __init__(
        self,
        latent_dim: int,
        hidden_dims: tuple[int, ...] = (512, 256),
        layers_per_block: int = 2,
        time_embed_dim: int = 256,
        dropout: float = 0.0,
        num_class_embeds: int | None = None,
        condition_dim: int | None = None,
    ):
        super().__init__()
        hidden_dims = list(hidden_dims)
        if not hidden_dims or layers_per_block < 1:
            raise ValueError(f"need >= 1 hidden width and layers_per_block >= 1, got {hidden_dims}, {layers_per_block}")
        if num_class_embeds is not None and num_class_embeds < 1:
            raise ValueError(f"num_class_embeds must be None or >= 1, got {num_class_embeds}")
        if condition_dim is not None and condition_dim < 1:
            raise ValueError(f"condition_dim must be None or >= 1, got {condition_dim}")

        # Sinusoidal features of t, then an MLP (as UNet2DModel): (B,) -> (B, time_embed_dim).
        self.time_proj = Timesteps(hidden_dims[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(hidden_dims[0], time_embed_dim)
        self.class_embedding = (
            nn.Embedding(num_class_embeds + 1, time_embed_dim) if num_class_embeds is not None else None
        )
        if condition_dim is not None:
            self.condition_proj = nn.Linear(condition_dim, time_embed_dim)
            self.null_condition = nn.Parameter(torch.zeros(time_embed_dim))
        else:
            self.condition_proj, self.null_condition = None, None

        self.conv_in = nn.Linear(latent_dim, hidden_dims[0])
        self.down_blocks = nn.ModuleList()
        width = hidden_dims[0]
        for w in hidden_dims:
            for _ in range(layers_per_block):
                self.down_blocks.append(ResidualBlock(width, w, time_embed_dim, dropout))
                width = w
        self.mid_block = ResidualBlock(width, width, time_embed_dim, dropout)
        # Each up block consumes the matching down block's output (skip connection), last first.
        self.up_blocks = nn.ModuleList()
        skip_widths = [blk.linear2.out_features for blk in self.down_blocks]
        out_widths = skip_widths[::-1][1:] + [hidden_dims[0]]
        for skip_w, out_w in zip(skip_widths[::-1], out_widths):
            self.up_blocks.append(ResidualBlock(width + skip_w, out_w, time_embed_dim, dropout))
            width = out_w
        self.norm_out = nn.LayerNorm(width)
        self.conv_out = nn.Linear(width, latent_dim)
        # Zero-init the output so the untrained model predicts 0 (a stable start, as in DiT / ADM).
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def is_conditional(self) -> bool:
        return self.class_embedding is not None or self.condition_proj is not None

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        conditions: torch.Tensor | None = None,
        drop_condition: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> FMRIDenoiserOutput | tuple[torch.Tensor]:
        r"""
        Args:
            sample (`torch.Tensor`): Noisy latents, (B, latent_dim).
            timestep (`torch.Tensor` or `int`): Diffusion step, a scalar or (B,).
            class_labels (`torch.LongTensor`, *optional*): (B,) in [0, num_class_embeds); None = null class.
            conditions (`torch.Tensor`, *optional*): (B, condition_dim); None = null condition.
            drop_condition (`torch.BoolTensor`, *optional*): (B,), True where the condition is replaced by the
                null one (condition dropout during training, the unconditional half of classifier-free guidance).
        """
        batch = sample.shape[0]
        if sample.ndim != 2 or sample.shape[1] != self.config.latent_dim:
            raise ValueError(f"Expected sample of shape (batch, {self.config.latent_dim}), got {tuple(sample.shape)}")

        # 1. time
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(batch) if t.ndim == 0 else t
        t_emb = self.time_proj(t).to(dtype=sample.dtype)  # Timesteps returns fp32
        emb = self.time_embedding(t_emb)  # (B, time_embed_dim)

        # 2. condition (summed into the time embedding, as UNet2DModel does with class embeddings)
        keep = None if drop_condition is None else ~drop_condition.to(device=sample.device, dtype=torch.bool)
        emb = emb + self._condition_embedding(batch, class_labels, conditions, keep, emb)

        # 3. down
        h = self.conv_in(sample)
        skips = []
        for block in self.down_blocks:
            h = block(h, emb)
            skips.append(h)

        # 4. mid
        h = self.mid_block(h, emb)

        # 5. up, joining the skip connections in reverse order
        for block in self.up_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)

        # 6. out
        out = self.conv_out(nn.functional.silu(self.norm_out(h)))
        return FMRIDenoiserOutput(sample=out) if return_dict else (out,)

    def _condition_embedding(self, batch, class_labels, conditions, keep, like) -> torch.Tensor:
        """(B, time_embed_dim) sum of class and continuous-condition embeddings; 0 for an unconditional model."""
        if class_labels is not None and self.class_embedding is None:
            raise ValueError("class_labels were given, but this denoiser has no class embedding (num_class_embeds=None)")
        if conditions is not None and self.condition_proj is None:
            raise ValueError("conditions were given, but this denoiser has no condition projection (condition_dim=None)")
        emb = torch.zeros_like(like)
        if self.class_embedding is not None:
            null = self.config.num_class_embeds
            labels = torch.full((batch,), null, device=like.device, dtype=torch.long)
            if class_labels is not None:
                labels = class_labels.to(device=like.device, dtype=torch.long).reshape(batch)
                if ((labels < 0) | (labels >= null)).any():
                    raise ValueError(f"class_labels must lie in [0, {null}), got values {labels.unique().tolist()}")
                if keep is not None:
                    labels = torch.where(keep, labels, torch.full_like(labels, null))
            emb = emb + self.class_embedding(labels).to(like.dtype)
        if self.condition_proj is not None:
            cond = self.null_condition.to(like.dtype).expand(batch, -1)
            if conditions is not None:
                if conditions.shape != (batch, self.config.condition_dim):
                    raise ValueError(
                        f"Expected conditions of shape ({batch}, {self.config.condition_dim}), got {tuple(conditions.shape)}"
                    )
                projected = self.condition_proj(conditions.to(device=like.device, dtype=like.dtype))
                cond = projected if keep is None else torch.where(keep[:, None], projected, cond)
            emb = emb + cond
        return emb
