"""Hugging Face Hub helpers: resolve repo ids to folders, write model cards, upload pipeline folders."""

import json
import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData, create_repo, snapshot_download, upload_folder
from huggingface_hub.utils import HFValidationError, validate_repo_id

# Never uploaded: training state is large, private to the run, and pickled by accelerate.
NOT_UPLOADED = ("checkpoint-*", "*.pt", "*.pth", "*.bin", "*.pkl", "*.log", "logs")

MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A latent diffusion model of fMRI activity patterns, trained with
fmri-diffusers (the `fmri-diffusers` Python package): an MLP VAE (`vae/`) maps each pattern of
{{ n_voxels }} voxels to a {{ latent_dim }}-dimensional latent, and a residual-MLP denoiser (`denoiser/`)
generates latents with a `{{ scheduler }}`.

## Use

```python
from fmri_diffusers import FMRILatentDiffusionPipeline

pipe = FMRILatentDiffusionPipeline.from_pretrained("{{ repo_id }}")
samples = pipe(batch_size=16, num_inference_steps=20).samples  # (16, {{ n_voxels }}), data units
```

## Training data

{{ training_data }}

## Evaluation

{{ metrics_table }}

Limitations: synthetic patterns reproduce the statistics of the training data; they are not a substitute
for real measurements, and metrics on small held-out sets carry wide uncertainty (see the report).
"""


def resolve_pretrained_path(name_or_path: str | os.PathLike, **hub_kwargs) -> str:
    """A local folder as it is; otherwise a Hub repo id downloaded with ``snapshot_download``.

    Raises:
        ValueError: if ``name_or_path`` is neither an existing folder nor a valid repo id.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ValueError(f"{name_or_path} is a file; expected a pipeline folder or a Hub repo id")
    name = str(name_or_path)
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ValueError(f"{name} is neither an existing folder nor a Hub repo id of the form 'owner/name'") from None
    return snapshot_download(name, **hub_kwargs)


def create_model_card(
    folder: str | os.PathLike,
    *,
    repo_id: str,
    training_data: str = "Not recorded.",
    metrics: dict[str, float] | None = None,
    tags: list[str] | None = None,
    license: str = "gpl-3.0",
) -> Path:
    """Write ``README.md`` (a Hub model card) for the pipeline saved in ``folder`` and return its path."""
    folder = Path(folder)
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    sched_cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    rows = ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in (metrics or {}).items()]
    card = ModelCard.from_template(
        ModelCardData(
            library_name="diffusers",
            license=license,
            tags=["fmri", "neuroscience", "latent-diffusion", "fmri-diffusers", *(tags or [])],
            pipeline_tag="unconditional-generation",
        ),
        template_str=MODEL_CARD_TEMPLATE,
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        n_voxels=vae_cfg["n_voxels"],
        latent_dim=vae_cfg["latent_dim"],
        scheduler=sched_cfg["_class_name"],
        training_data=training_data,
        metrics_table="\n".join(rows) if metrics else "No metrics were recorded for this model.",
    )
    out = folder / "README.md"
    card.save(out)
    return out


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, *, token: str | None = None,
                       private: bool | None = None, commit_message: str | None = None) -> str:
    """Upload a pipeline folder without checkpoints or optimizer state, and without local paths in configs.

    Configs of a model loaded from disk record ``_name_or_path`` (an absolute local path); a staged copy with
    that key removed is uploaded instead. Returns the URL of the commit.
    """
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} holds no model_index.json: expected a folder written by save_pretrained")
    repo_id = create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as staging:
        shutil.copytree(folder, staging, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*NOT_UPLOADED))
        for cfg in Path(staging).rglob("*.json"):
            data = json.loads(cfg.read_text())
            if isinstance(data, dict) and "_name_or_path" in data:
                del data["_name_or_path"]
                cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        info = upload_folder(repo_id=repo_id, folder_path=staging, token=token,
                             commit_message=commit_message or "Upload fmri-diffusers pipeline")
    return str(getattr(info, "commit_url", info))
