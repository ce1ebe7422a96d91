"""FMRILatentDiffusionPipeline: sample synthetic fMRI patterns and reconstruct real ones."""

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from diffusers import DiffusionPipeline
from diffusers.schedulers import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

# The loader finds third-party component classes through sys.modules, so this module imports them.
from .hub import create_model_card, push_folder_to_hub, resolve_pretrained_path
from .models.fmri_denoiser import FMRIDenoiser
from .models.fmri_vae import FMRIVAE

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> from fmri_diffusers import FMRILatentDiffusionPipeline
        >>> from diffusers import DPMSolverMultistepScheduler

        >>> pipe = FMRILatentDiffusionPipeline.from_pretrained("outputs/ldm")
        >>> pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        >>> out = pipe(batch_size=16, num_inference_steps=20, generator=torch.Generator().manual_seed(0))
        >>> out.samples.shape  # (16, n_voxels), in the units and voxel order of the training data
        ```
"""

_OUTPUT_TYPES = ("np", "pt", "latent")


@dataclass
class FMRIPipelineOutput(BaseOutput):
    """samples: `np.ndarray` or `torch.Tensor` of shape (batch_size, n_voxels), float32, in the training
    data's units and voxel order (or the (batch_size, latent_dim) diffusion latents for `output_type="latent"`)."""

    samples: np.ndarray | torch.Tensor


class FMRILatentDiffusionPipeline(DiffusionPipeline):
    r"""Latent diffusion for fMRI patterns: noise -> denoiser loop -> ``/ scaling_factor`` -> VAE decode -> user units.

    Parameters:
        vae ([`FMRIVAE`]): Maps patterns to latents and back; carries the voxel statistics of the training data.
        denoiser ([`FMRIDenoiser`]): Predicts noise (or v / x0) for latents.
        scheduler ([`SchedulerMixin`]): Any diffusers scheduler that works on (B, D) tensors; DDPM, DDIM,
            DPMSolverMultistep, UniPC, Euler and Heun are tested. Use ``clip_sample=False``.
    """

    model_cpu_offload_seq = "denoiser->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, vae: FMRIVAE, denoiser: FMRIDenoiser, scheduler: KarrasDiffusionSchedulers | SchedulerMixin):
        super().__init__()
        self.register_modules(vae=vae, denoiser=denoiser, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load from a local folder or a Hub repo id.

        For a repo id the folder is first fetched with ``huggingface_hub.snapshot_download`` and then loaded
        locally: diffusers cannot resolve third-party component classes from a repo id (diffusers#6563).
        """
        hub_kwargs = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
        folder = resolve_pretrained_path(pretrained_model_name_or_path, **hub_kwargs)
        if not os.path.isfile(os.path.join(folder, "model_index.json")):
            found = sorted(os.listdir(folder))[:10]
            raise ValueError(
                f"{pretrained_model_name_or_path} is not a pipeline folder: it has no model_index.json (found {found}). "
                "Pass the --output_dir of train_ldm.py or a folder written by save_pretrained."
            )
        return super().from_pretrained(folder, **kwargs)

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    commit_message: str | None = None, model_card_kwargs: dict | None = None) -> str:
        """Save the pipeline with a model card to a temporary folder and upload it (safetensors only)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, safe_serialization=True)
            create_model_card(tmp, repo_id=repo_id, **(model_card_kwargs or {}))
            return push_folder_to_hub(tmp, repo_id, token=token, private=private, commit_message=commit_message)

    # -- input checks -----------------------------------------------------------------------------

    def _check_conditioning(self, batch_size, class_labels, conditions, guidance_scale):
        cfg = self.denoiser.config
        if class_labels is not None:
            if cfg.num_class_embeds is None:
                raise ValueError("class_labels were given, but the denoiser is unconditional (num_class_embeds=None)")
            class_labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
            if class_labels.numel() == 1:
                class_labels = class_labels.expand(batch_size)
            if class_labels.shape != (batch_size,):
                raise ValueError(f"class_labels must be a scalar or have shape ({batch_size},), got {tuple(class_labels.shape)}")
            if ((class_labels < 0) | (class_labels >= cfg.num_class_embeds)).any():
                raise ValueError(
                    f"class_labels must lie in [0, {cfg.num_class_embeds}), got {sorted(class_labels.unique().tolist())}"
                )
            class_labels = class_labels.to(self.device)
        if conditions is not None:
            if cfg.condition_dim is None:
                raise ValueError("conditions were given, but the denoiser has no condition input (condition_dim=None)")
            conditions = torch.as_tensor(conditions, dtype=torch.float32)
            if conditions.shape != (batch_size, cfg.condition_dim):
                raise ValueError(
                    f"conditions must have shape ({batch_size}, {cfg.condition_dim}), got {tuple(conditions.shape)}"
                )
            if not torch.isfinite(conditions).all():
                raise ValueError("conditions contain NaN or Inf")
            conditions = conditions.to(self.device)
        if not isinstance(guidance_scale, (int, float)) or not np.isfinite(guidance_scale):
            raise TypeError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        if guidance_scale != 1.0 and class_labels is None and conditions is None:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a condition: pass class_labels or conditions "
                "to a conditional denoiser (guidance_scale=1.0 samples without guidance)"
            )
        return class_labels, conditions

    @staticmethod
    def _check_steps_and_output(num_inference_steps, output_type):
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {_OUTPUT_TYPES}, got {output_type!r}")

    # -- shared steps -----------------------------------------------------------------------------

    def _denoise(self, latents, timesteps, class_labels, conditions, guidance_scale, generator,
                 callback_on_step_end, callback_on_step_end_tensor_inputs):
        """The sampling loop over ``timesteps``; latents stay fp32 (schedulers' sigmas overflow fp16)."""
        do_cfg = guidance_scale != 1.0
        batch = latents.shape[0]
        # Classifier-free guidance: one batch holds the conditional half and the null-condition half.
        drop = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)]) if do_cfg else None
        labels_in = torch.cat([class_labels, class_labels]) if do_cfg and class_labels is not None else class_labels
        cond_in = torch.cat([conditions, conditions]) if do_cfg and conditions is not None else conditions
        if cond_in is not None:
            cond_in = cond_in.to(self.denoiser.dtype)
        # Only the stochastic schedulers (DDPM, ancestral, SDE solvers) take a generator in step().
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents, latents]) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                pred = self.denoiser(
                    model_input.to(self.denoiser.dtype), t, class_labels=labels_in, conditions=cond_in,
                    drop_condition=drop,
                ).sample.float()
                if do_cfg:
                    pred_cond, pred_uncond = pred.chunk(2)
                    pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
                latents = self.scheduler.step(pred, t, latents, **step_kwargs).prev_sample

                if callback_on_step_end is not None:
                    callback_kwargs = {k: {"latents": latents}[k] for k in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                progress_bar.update()
        return latents

    def _decode(self, latents, output_type, return_dict, observation_noise=False, generator=None):
        """Diffusion latents -> VAE decode (+ observation noise) -> user units, packaged as `output_type`."""
        if output_type == "latent":
            samples = latents
        else:
            z = latents / self.vae.config.scaling_factor
            x = self.vae.decode(z.to(self.vae.dtype)).sample  # (B, n_voxels), model space
            if observation_noise:
                x = self.vae.sample_observation(x, generator)
            samples = self.vae.denormalize(x)  # fp32, user units
            if output_type == "np":
                samples = samples.cpu().numpy()
        self.maybe_free_model_hooks()
        return FMRIPipelineOutput(samples=samples) if return_dict else (samples,)

    # -- public API -------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        class_labels: torch.Tensor | list[int] | int | None = None,
        conditions: torch.Tensor | np.ndarray | None = None,
        guidance_scale: float = 1.0,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        observation_noise: bool = True,
    ) -> FMRIPipelineOutput | tuple:
        r"""
        Sample synthetic fMRI patterns.

        Args:
            batch_size (`int`, defaults to 1): Number of patterns to generate.
            num_inference_steps (`int`, defaults to 50): Denoising steps (more: slower, usually better).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): Makes sampling reproducible; a
                list of `batch_size` generators makes each sample reproducible on its own.
            latents (`torch.Tensor`, *optional*): Initial noise, (batch_size, latent_dim), before scaling by the
                scheduler's `init_noise_sigma`.
            class_labels (`int`, `list[int]` or `torch.LongTensor`, *optional*): Class / subject per sample.
            conditions (`torch.Tensor`, *optional*): Continuous condition vectors, (batch_size, condition_dim).
            guidance_scale (`float`, defaults to 1.0): Classifier-free guidance weight w in
                eps = eps_null + w * (eps_cond - eps_null); 1.0 disables guidance.
            output_type (`str`, defaults to `"np"`): `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, defaults to `True`): Return an [`FMRIPipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, *optional*): Called as `callback(pipe, step, timestep, kwargs)` after
                each step; may return a dict replacing `latents`.
            callback_on_step_end_tensor_inputs (`list[str]`): Tensors passed to the callback (`"latents"`).
            observation_noise (`bool`, defaults to `True`): Sample x ~ p(x | z): add the VAE's per-voxel residual
                noise (`vae.voxel_stats.noise_std`, estimated on held-out data by `train_vae.py`) to the decoded
                mean, as real scans carry it. `False` returns the decoder mean E[x | z] (smoother than real data).

        Examples:
        """
        # 1. check inputs
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self._check_steps_and_output(num_inference_steps, output_type)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"Got a list of {len(generator)} generators for batch_size={batch_size}; they must match")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may only hold {self._callback_tensor_inputs}, got {sorted(unknown)}")
        class_labels, conditions = self._check_conditioning(batch_size, class_labels, conditions, guidance_scale)

        # 2. prepare latents: (B, latent_dim), fp32
        shape = (batch_size, self.denoiser.config.latent_dim)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        else:
            latents = latents.to(device=self.device, dtype=torch.float32)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma

        # 3. denoise
        latents = self._denoise(latents, self.scheduler.timesteps, class_labels, conditions, guidance_scale,
                                generator, callback_on_step_end, callback_on_step_end_tensor_inputs)

        # 4. decode to the user's units
        return self._decode(latents, output_type, return_dict, observation_noise, generator)

    @torch.no_grad()
    def reconstruct(
        self,
        samples: np.ndarray | torch.Tensor,
        strength: float = 0.0,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        class_labels: torch.Tensor | list[int] | int | None = None,
        conditions: torch.Tensor | np.ndarray | None = None,
        guidance_scale: float = 1.0,
        output_type: str = "np",
        return_dict: bool = True,
    ) -> FMRIPipelineOutput | tuple:
        r"""
        Reconstruct real patterns through the model.

        `strength=0` is the VAE round trip (posterior mean -> decode). `strength` in (0, 1] noises the latent to
        that fraction of the schedule and denoises it back (SDEdit, Meng et al. 2022): the larger, the more the
        result follows the learned distribution rather than the input.

        Args:
            samples (`np.ndarray` or `torch.Tensor`): (n_samples, n_voxels) in the training data's units.
            strength (`float`, defaults to 0.0): In [0, 1].
            num_inference_steps (`int`, defaults to 50): Steps of the full schedule; `strength` of them are run.
            Other arguments as in `__call__`.
        """
        # 1. check inputs
        if not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
        self._check_steps_and_output(num_inference_steps, output_type)
        if isinstance(samples, np.ndarray):
            samples = torch.from_numpy(np.ascontiguousarray(samples))
        if not isinstance(samples, torch.Tensor):
            raise TypeError(f"samples must be a numpy array or torch tensor, got {type(samples).__name__}")
        n_voxels = self.vae.config.n_voxels
        if samples.ndim != 2 or samples.shape[1] != n_voxels:
            raise ValueError(f"Expected samples of shape (n_samples, {n_voxels}), got {tuple(samples.shape)}")
        samples = samples.to(self.device, torch.float32)
        kept = self.vae.voxel_stats.mask > 0
        bad = ~torch.isfinite(samples[:, kept])
        if bad.any():
            raise ValueError(f"samples contain {bad.sum().item()} NaN/Inf values in kept voxels")
        batch_size = samples.shape[0]
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"Got a list of {len(generator)} generators for {batch_size} samples; they must match")
        class_labels, conditions = self._check_conditioning(batch_size, class_labels, conditions, guidance_scale)

        # 2. encode to the posterior mean, scaled to diffusion latents
        x = self.vae.normalize(samples).to(self.vae.dtype)
        latents = self.vae.encode(x).latent_dist.mode().float() * self.vae.config.scaling_factor
        if strength == 0.0:
            return self._decode(latents, output_type, return_dict)

        # 3. noise to the starting timestep (as diffusers' img2img pipelines choose it)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        n_run = int(num_inference_steps * strength)
        if n_run < 1:
            raise ValueError(
                f"strength={strength} runs no step out of num_inference_steps={num_inference_steps}; "
                f"use strength >= {1 / num_inference_steps:.3g} or more steps"
            )
        t_start = (num_inference_steps - n_run) * self.scheduler.order
        timesteps = self.scheduler.timesteps[t_start:]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start)
        noise = randn_tensor(latents.shape, generator=generator, device=self.device, dtype=torch.float32)
        latents = self.scheduler.add_noise(latents, noise, timesteps[:1].repeat(batch_size))

        # 4. denoise back and decode
        latents = self._denoise(latents, timesteps, class_labels, conditions, guidance_scale, generator, None, ())
        return self._decode(latents, output_type, return_dict)


FMRILatentDiffusionPipeline.__call__.__doc__ += EXAMPLE_DOC_STRING
