"""Loading that fails loudly: a checkpoint that does not fill every tensor of the model is an error."""

from diffusers import ModelMixin


class StrictLoadingMixin:
    """``from_pretrained`` that raises instead of leaving missing weights random or on the ``meta`` device.

    diffusers 0.42 (with the default ``low_cpu_mem_usage=True``) only logs missing keys and leaves those
    parameters on ``meta``; loading a VAE folder as a denoiser would "succeed" the same way.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> ModelMixin:
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        problems = [f"{key} ({len(v)}): {', '.join(map(str, v[:5]))}{', ...' if len(v) > 5 else ''}"
                    for key, v in info.items() if v]
        if problems:
            where = pretrained_model_name_or_path
            if kwargs.get("subfolder"):
                where = f"{where}/{kwargs['subfolder']}"
            raise ValueError(f"Checkpoint {where} does not match {cls.__name__}: {'; '.join(problems)}")
        return (model, info) if want_info else model
