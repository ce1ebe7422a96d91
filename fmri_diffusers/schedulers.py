"""Short names for the diffusers schedulers tested with this project's (B, D) latents."""

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

# Each one is checked against an exact Gaussian denoiser in tests/test_pipeline.py.
SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
}


def make_scheduler(name: str, config):
    """The scheduler called ``name`` built from another scheduler's ``config`` (same betas and prediction type)."""
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; expected one of {list(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(config)
