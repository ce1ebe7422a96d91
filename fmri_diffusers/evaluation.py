"""Evaluate a trained pipeline on the data and split it was trained with; write metrics, plots and a report.

    from fmri_diffusers.evaluation import evaluate_pipeline
    results = evaluate_pipeline("outputs/demo/ldm", "outputs/demo/eval")

Every number comes with its context (see :mod:`fmri_diffusers.report`): a PCA reconstruction at the
VAE's latent size, a Gaussian in PCA space (the simplest generator) and a real-vs-real ceiling.
"""

import json
import logging
from pathlib import Path

import numpy as np
import torch

from .baselines import PCAGaussian, PCAReconstruction, split_heldout
from .data import load_fmri, load_space, save_samples
from .data.nifti import VolumeSpace
from .pipeline_fmri_ldm import FMRILatentDiffusionPipeline
from .report import (
    BASELINES,
    evaluate_generated,
    evaluate_reconstructions,
    format_headline_table,
    format_verdict,
    write_report,
)
from .training import DATA_CONFIG, SPACE_DIR, SPLITS_FILE, TRAIN_LOG
from . import visualization as viz

logger = logging.getLogger(__name__)


def load_run_data(run_dir):
    """The data and split a training run used, from its ``data_config.json`` and ``splits.npz``.

    Returns
    -------
    fmri : FMRIData
    splits : dict of str to int index arrays
    config : dict (the run's data_config.json)
    """
    run_dir = Path(run_dir)
    cfg_file = run_dir / DATA_CONFIG
    if not cfg_file.is_file():
        raise ValueError(f"{run_dir} has no {DATA_CONFIG}: evaluate the --output_dir of train_ldm.py, "
                         "or pass data_path to evaluate_pipeline")
    config = json.loads(cfg_file.read_text())
    unlist = lambda v: v[0] if isinstance(v, list) and len(v) == 1 else v  # noqa: E731
    fmri = load_fmri(unlist(config["data_path"]), data_key=unlist(config.get("data_key")),
                     label_key=unlist(config.get("label_key")), mask=config.get("mask"),
                     nonfinite=config.get("nonfinite", "raise"), surface_order=config.get("surface_order"))
    if fmri.n_voxels != config["n_voxels"]:
        raise ValueError(f"{config['data_path']} now has {fmri.n_voxels} voxels; the run was trained on "
                         f"{config['n_voxels']}: the file changed since training")
    with np.load(run_dir / SPLITS_FILE) as f:
        splits = {k: f[k] for k in f.files}
    if fmri.space is None and (run_dir / SPACE_DIR).is_dir():
        fmri.space = load_space(run_dir / SPACE_DIR)
    return fmri, splits, config


def _training_logs(run_dir: Path, config: dict) -> list[dict]:
    """Logged curves of the LDM run and, when recorded, of the VAE run it started from."""
    logs = []
    dirs = [run_dir]
    vae_dir = config.get("vae")
    if vae_dir and Path(vae_dir).is_dir():
        dirs.insert(0, Path(vae_dir))
    for d in dirs:
        prefix = "vae/" if d != run_dir else "ldm/"
        f = d / TRAIN_LOG
        if f.is_file():
            for line in f.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    logs.append({"step": row["step"], "name": prefix + row["name"], "value": row["value"]})
    return logs


def _conditioning_labels(pipe, fmri, config):
    """Per-sample class index the denoiser was conditioned on (``config["classes"][i]`` is class i), or None."""
    if pipe.denoiser.config.num_class_embeds is None:
        return None
    values = fmri.subjects if config.get("conditioning") == "subject" else fmri.labels
    classes = config.get("classes")
    if values is None or classes is None:
        raise ValueError("the denoiser is class-conditional, but the run's data_config.json records no classes "
                         "or the data has no labels")
    classes = np.asarray(classes, dtype=np.asarray(values).dtype)
    codes = np.searchsorted(classes, values)
    if (codes >= len(classes)).any() or (classes[np.minimum(codes, len(classes) - 1)] != values).any():
        raise ValueError(f"the data holds classes the model was not trained on; trained on {classes.tolist()}")
    return codes


@torch.no_grad()
def evaluate_pipeline(
    pipeline_dir,
    out_dir,
    *,
    num_samples: int | None = None,
    num_inference_steps: int = 50,
    scheduler=None,
    guidance_scale: float = 1.0,
    n_pca: int = 20,
    n_boot: int = 200,
    seed: int = 0,
    pipe: FMRILatentDiffusionPipeline | None = None,
) -> dict:
    """Generate from a trained pipeline, score it with baselines and a ceiling, write everything to ``out_dir``.

    Parameters
    ----------
    pipeline_dir : str or Path
        The ``--output_dir`` of ``train_ldm.py`` (pipeline + ``data_config.json`` + ``splits.npz``).
    out_dir : str or Path
        Receives ``metrics.json``, ``report.md``, ``figures/*.png``, ``samples.npz`` and, when the data came
        from NIfTI or surface files, the samples as images in the data's own space.
    num_samples : int, optional
        Samples to generate; default: as many as the training split has (at least 100).
    num_inference_steps, scheduler, guidance_scale
        Sampling settings; ``scheduler`` is a diffusers scheduler instance to swap in.
    n_pca, n_boot, seed
        PCA components for FD / MMD / C2ST / precision-recall, bootstrap draws, seed of everything random.

    Returns
    -------
    dict
        The results written to ``metrics.json``.
    """
    pipeline_dir, out_dir = Path(pipeline_dir), Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    pipe = pipe or FMRILatentDiffusionPipeline.from_pretrained(pipeline_dir)
    if scheduler is not None:
        pipe.scheduler = scheduler
    fmri, splits, config = load_run_data(pipeline_dir)
    if pipe.vae.config.n_voxels != fmri.n_voxels:
        raise ValueError(f"the pipeline's VAE expects {pipe.vae.config.n_voxels} voxels, the data has {fmri.n_voxels}")
    if len(splits["test"]) < 4:
        raise ValueError(f"evaluation needs >= 4 held-out (test) samples to split off a real-vs-real ceiling, "
                         f"the run's test split has {len(splits['test'])}")

    # 1. real data: train and held-out, in the data's units
    train, test = fmri.data[splits["train"]], fmri.data[splits["test"]]
    classes = _conditioning_labels(pipe, fmri, config)
    n_gen = num_samples or max(len(train), 100)

    # 2. generate: a conditional model gets the training split's class frequencies
    gen = torch.Generator().manual_seed(seed)
    gen_y = None
    if classes is not None:
        gen_y = np.random.default_rng(seed).choice(classes[splits["train"]], size=n_gen)
    logger.info("Sampling %d patterns with %s, %d steps", n_gen, type(pipe.scheduler).__name__, num_inference_steps)
    samples = pipe(batch_size=n_gen, num_inference_steps=num_inference_steps, generator=gen,
                   class_labels=None if gen_y is None else torch.from_numpy(gen_y),
                   guidance_scale=guidance_scale).samples
    if not np.isfinite(samples).all():
        raise ValueError(f"the model generated {int((~np.isfinite(samples)).sum())} NaN/Inf values: "
                         "the pipeline is broken (training diverged?), not the data")

    # 3. baselines at the VAE's latent size, and the real-vs-real ceiling
    latent_dim = pipe.vae.config.latent_dim
    train_y = None if classes is None else classes[splits["train"]]
    # The model samples with its VAE's residual noise; "pca_gaussian_noise" is the baseline with the same.
    baselines = {name: PCAGaussian(latent_dim, seed=seed, residual_noise=noise).fit(train, labels=train_y)
                 .sample(n_gen, seed=seed, labels=gen_y)
                 for name, noise in (("pca_gaussian", False), ("pca_gaussian_noise", True))}
    if classes is not None:
        reference, ceiling, ref_y, ceil_y = split_heldout(test, seed, labels=classes[splits["test"]])
        labels = {"train_y": train_y, "heldout_y": ref_y,
                  "generated_y": {"model": gen_y, **{b: gen_y for b in baselines}, "real_vs_real": ceil_y}}
    else:
        reference, ceiling = split_heldout(test, seed)
        labels = None
    generation = evaluate_generated(train, reference, {"model": samples, **baselines, "real_vs_real": ceiling},
                                    labels=labels, n_pca=n_pca, seed=seed, n_boot=n_boot)

    # 4. reconstructions of held-out data: VAE round trip vs PCA at the same size
    vae_rec = pipe.reconstruct(test).samples
    pca_rec = PCAReconstruction(latent_dim, seed=seed).fit(train).reconstruct(test)
    reconstruction = evaluate_reconstructions(test, {"vae": vae_rec, "pca": pca_rec}, n_boot=n_boot, seed=seed)

    results = {
        "generation": generation,
        "reconstruction": reconstruction,
        "run": {"pipeline_dir": str(pipeline_dir), "scheduler": type(pipe.scheduler).__name__,
                "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                "num_samples": n_gen, "split_sizes": {k: int(len(v)) for k, v in splits.items()}},
    }

    # 5. figures
    figures = _figures(pipe, fmri, splits, classes, test, vae_rec, pca_rec, {"model": samples, **baselines},
                       pipeline_dir, config, fig_dir, seed)

    # 6. samples, as .npz and in the data's own space
    meta = {"scheduler": type(pipe.scheduler).__name__, "num_inference_steps": num_inference_steps, "seed": seed}
    if gen_y is not None:
        meta["class_labels"] = gen_y
    written = save_samples(out_dir / "samples.npz", samples, metadata=meta)
    if fmri.space is not None:
        suffix = ".nii.gz" if isinstance(fmri.space, VolumeSpace) else {"mgh": ".mgz", "gifti": ".func.gii"}[fmri.space.fmt]
        written += save_samples(out_dir / f"samples{suffix}", samples, space=fmri.space)
    results["files"] = {"samples": [str(p) for p in written]}

    report = write_report(results, out_dir, figures=figures, title=f"fmri-diffusers evaluation: {pipeline_dir.name}")
    results["files"]["report"] = str(report)
    logger.info("Report written to %s", report)
    return results


def _figures(pipe, fmri, splits, classes, test, vae_rec, pca_rec, generated, run_dir, config, fig_dir,
             seed) -> dict:
    """Every plot of the report; returns caption -> PNG path."""
    figs = {}

    def add(caption, name, fn, *args, **kwargs):
        path = fig_dir / f"{name}.png"
        fn(*args, path=path, **kwargs)
        figs[caption] = path

    logs = _training_logs(run_dir, config)
    if logs:
        add("Training curves", "training_curves", viz.plot_training_curves, logs, log_y=True)
    add("Held-out patterns and their VAE reconstructions", "reconstructions", viz.plot_reconstructions,
        test, vae_rec, seed=seed)
    add("Correlation distributions (held-out vs reconstructions)", "correlations",
        viz.plot_correlation_distributions, test, {"vae": vae_rec, "pca": pca_rec})
    # Latents of every real sample (posterior means), coloured by class or subject.
    idx = np.concatenate([splits["train"], splits["test"]])
    x = torch.from_numpy(np.ascontiguousarray(fmri.data[idx]))
    latents = pipe.vae.encode(pipe.vae.normalize(x).to(pipe.vae.dtype)).latent_dist.mode().float().numpy()
    # Colour by the class values the user knows (config["classes"][i] is denoiser class i), else label, else split.
    color = np.asarray(config["classes"])[classes[idx]] if classes is not None else (fmri.labels[idx] if fmri.labels is not None else
                                                      np.where(np.isin(idx, splits["test"]), "test", "train"))
    add("Latent space (PCA and t-SNE of posterior means)", "latent_space", viz.plot_latent_space, latents,
        labels=color, seed=seed)
    add("Value distributions: generated vs held-out", "value_distributions", viz.plot_value_distributions,
        test, generated)
    add("Voxel-by-voxel correlation structure", "correlation_structure", viz.plot_correlation_structure,
        test, generated, seed=seed)
    if isinstance(fmri.space, VolumeSpace):
        # Patterns relative to the training mean, in training-SD units: raw BOLD maps show only the mean image.
        masker = fmri.space.masker
        z = lambda v: pipe.vae.normalize(torch.from_numpy(np.asarray(v)[None, :])).numpy()  # noqa: E731
        three_d = lambda v: masker.inverse_transform(z(v)).slicer[..., 0]  # noqa: E731
        add("Brain maps (z-scored with the training statistics): held-out, its reconstruction, a generated "
            "sample", "brain_maps", viz.plot_brain_maps,
            [("held-out", three_d(test[0])), ("VAE reconstruction", three_d(vae_rec[0])),
             ("generated", three_d(generated["model"][0]))])
    return figs


def print_summary(results: dict) -> str:
    """The headline table and where the files are, as printed by ``main.py``."""
    lines = [format_headline_table(results), ""]
    for baseline in BASELINES:
        if baseline in results["generation"]["generators"]:
            lines += [f"Verdict against {baseline}:", format_verdict(results, baseline=baseline), ""]
    for name, paths in results.get("files", {}).items():
        for p in [paths] if isinstance(paths, str) else paths:
            lines.append(f"{name}: {p}")
    return "\n".join(lines)
