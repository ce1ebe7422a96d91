"""evaluate_pipeline and main.py end to end on tiny labelled data; bad configs and broken pipelines refused."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate.state import AcceleratorState, GradientState
from diffusers import DDPMScheduler
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fmri_diffusers import FMRIDenoiser, FMRILatentDiffusionPipeline
from fmri_diffusers.baselines import split_heldout
from fmri_diffusers.evaluation import evaluate_pipeline
from fmri_diffusers.models.fmri_vae import FMRIVAE

import main

ROOT = Path(__file__).resolve().parents[1]

N_VOXELS = 30
GENERATORS = ["model", "pca_gaussian", "pca_gaussian_noise", "real_vs_real"]

# A tiny run: seconds on one CPU thread. Keys are the flags of train_vae.py / train_ldm.py / main.py's evaluation.
TINY = {
    "data": {"data_key": "data", "label_key": "labels", "split": "random", "val_fraction": 0.1,
             "test_fraction": 0.25},
    "vae": {"seed": 0, "max_train_steps": 20, "train_batch_size": 8, "learning_rate": 3.0e-3,
            "lr_scheduler": "constant", "lr_warmup_steps": 0, "latent_dim": 4, "hidden_dims": [16, 8],
            "kl_weight": 0.1, "checkpointing_steps": 100, "validation_steps": 10, "report_to": "none"},
    "ldm": {"seed": 0, "max_train_steps": 20, "train_batch_size": 8, "learning_rate": 3.0e-3,
            "lr_scheduler": "constant", "lr_warmup_steps": 0, "ddpm_num_steps": 100,
            "ddpm_beta_schedule": "squaredcos_cap_v2", "denoiser_hidden_dims": [16], "layers_per_block": 1,
            "time_embed_dim": 16, "conditioning": "label", "checkpointing_steps": 100, "validation_steps": 10,
            "report_to": "none"},
    "evaluate": {"num_samples": 24, "num_inference_steps": 3, "scheduler": "ddim", "n_pca": 3, "n_boot": 5},
}


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def write_config(folder: Path, output_dir: Path, data_path: Path, **changes) -> Path:
    """TINY with the data file and output folder filled in; ``changes`` replace whole sections."""
    settings = {"output_dir": str(output_dir), **TINY, "data": {**TINY["data"], "data_path": str(data_path)}}
    settings.update(changes)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> Path:
    """60 samples x 30 voxels: 3 factors whose means differ by class (labels 1 and 2) + noise, offset 100."""
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 2], 30)
    factors = rng.normal(size=(60, 3)) + 1.5 * (labels[:, None] == 2)
    x = factors @ rng.normal(size=(3, N_VOXELS)) + 0.3 * rng.normal(size=(60, N_VOXELS)) + 100.0
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, data=x.astype(np.float32), labels=labels)
    return path


@pytest.fixture(scope="module")
def run(data_path, tmp_path_factory) -> Path:
    """One ``main.py --mode both`` run shared by the tests that read its files."""
    folder = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    main.main(main.parse_args(["--config", str(write_config(folder, folder / "out", data_path)), "--mode", "both"]))
    return folder / "out"


def test_main_both_writes_pipeline_metrics_report_figures_and_samples(run):
    assert (run / "vae" / "vae" / "config.json").is_file()
    pipe = FMRILatentDiffusionPipeline.from_pretrained(run / "ldm")
    samples = pipe(batch_size=3, num_inference_steps=2, class_labels=[0, 1, 0],
                   generator=torch.Generator().manual_seed(0)).samples
    assert samples.shape == (3, N_VOXELS) and np.isfinite(samples).all()

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert list(metrics["generation"]["generators"]) == GENERATORS
    assert set(metrics["reconstruction"]["methods"]) == {"vae", "pca"}
    for scores in metrics["generation"]["generators"].values():
        assert {"dispersion_ratio", "fd_train", "ks_mean", "c2st_auc", "precision", "recall", "dcr_ratio",
                "tstr_accuracy"} <= set(scores)

    report = (run / "eval" / "report.md").read_text()
    first_table_header = next(line for line in report.splitlines() if line.startswith("| metric |"))
    assert first_table_header == "| metric | model | pca_gaussian | pca_gaussian_noise | real_vs_real | how to read |"
    figures = sorted((run / "eval" / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 0 for f in figures)
    for f in figures:  # every figure is linked from the report
        assert f"figures/{f.name}" in report

    with np.load(run / "eval" / "samples.npz") as f:
        assert f["samples"].shape == (24, N_VOXELS)
        assert set(np.unique(f["class_labels"])) == {0, 1}  # a conditional model samples both classes


def test_evaluation_uses_the_runs_split_trtr_matches_sklearn(run, data_path):
    """TRTR = a classifier fitted on the run's train split, scored on the reference half of its test split."""
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    with np.load(run / "ldm" / "splits.npz") as f:
        splits = {k: f[k] for k in f.files}
    assert metrics["run"]["split_sizes"] == {k: len(v) for k, v in splits.items()}
    with np.load(data_path) as f:
        x, y = f["data"], f["labels"]
    ref, _, ref_y, _ = split_heldout(x[splits["test"]], 0, labels=y[splits["test"]])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
    expected = np.mean(clf.fit(x[splits["train"]], y[splits["train"]]).predict(ref) == ref_y)
    assert metrics["generation"]["reference"]["trtr_accuracy"] == pytest.approx(expected)


def test_main_evaluate_existing_checkpoint_reproduces_metrics(run, data_path, tmp_path):
    config = write_config(tmp_path, tmp_path / "unused", data_path)
    results = main.main(main.parse_args(["--config", str(config), "--mode", "evaluate", "--checkpoint",
                                         str(run / "ldm"), "--output_dir", str(tmp_path / "again")]))
    assert not (tmp_path / "again" / "vae").exists()  # nothing trained
    written = json.loads((tmp_path / "again" / "eval" / "metrics.json").read_text())
    first = json.loads((run / "eval" / "metrics.json").read_text())
    assert written["generation"] == first["generation"]  # seeded: the same samples and scores
    assert results["generation"]["generators"]["model"]["dcr_ratio"]["value"] == pytest.approx(
        first["generation"]["generators"]["model"]["dcr_ratio"]["value"])


@pytest.mark.parametrize("section, bad, match", [
    ("vae", {"latnt_dim": 4}, r"\[vae\]: unknown key 'latnt_dim'"),
    ("ldm", {"conditioning": "labels"}, r"\[ldm\]: invalid value 'labels' for key 'conditioning'"),
    ("evaluate", {"n_pcaa": 3}, r"\[evaluate\]: unknown key 'n_pcaa'"),
])
def test_typo_in_a_section_fails_before_training(data_path, tmp_path, section, bad, match):
    config = write_config(tmp_path, tmp_path / "out", data_path, **{section: {**TINY[section], **bad}})
    with pytest.raises(ValueError, match=match):
        main.main(main.parse_args(["--config", str(config), "--mode", "both"]))
    assert not (tmp_path / "out").exists()


def test_unknown_section_is_an_error(data_path, tmp_path):
    config = write_config(tmp_path, tmp_path / "out", data_path, evalute={"n_pca": 3})
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['evalute'\]"):
        main.main(main.parse_args(["--config", str(config)]))


def test_evaluate_refuses_a_pipeline_with_other_voxel_count(run, tmp_path):
    vae = FMRIVAE(n_voxels=N_VOXELS + 1, latent_dim=4, hidden_dims=[8])
    denoiser = FMRIDenoiser(latent_dim=4, hidden_dims=[8], layers_per_block=1, time_embed_dim=8, num_class_embeds=2)
    pipe = FMRILatentDiffusionPipeline(vae=vae, denoiser=denoiser, scheduler=DDPMScheduler(clip_sample=False))
    with pytest.raises(ValueError, match=rf"VAE expects {N_VOXELS + 1} voxels, the data has {N_VOXELS}"):
        evaluate_pipeline(run / "ldm", tmp_path / "eval", pipe=pipe, num_inference_steps=2, n_boot=0)


def test_evaluate_refuses_nan_samples(run, tmp_path):
    """A diverged denoiser (NaN weights) must stop the evaluation, not score NaNs."""
    pipe = FMRILatentDiffusionPipeline.from_pretrained(run / "ldm")
    with torch.no_grad():
        next(pipe.denoiser.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"generated \d+ NaN/Inf values"):
        evaluate_pipeline(run / "ldm", tmp_path / "eval", pipe=pipe, num_inference_steps=2, n_boot=0)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_evaluate_needs_a_training_run_folder(tmp_path):
    with pytest.raises(ValueError, match="has no data_config.json"):
        evaluate_pipeline(tmp_path, tmp_path / "eval", pipe=object())


def test_surface_data_round_trip_through_main_writes_samples_per_hemisphere(tmp_path):
    """Two FreeSurfer .mgz hemispheres in, generated samples out as one .mgz per hemisphere, same vertex counts."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    factors = rng.normal(size=(40, 2))
    paths = []
    for hemi, n_vertices in (("lh", 12), ("rh", 9)):
        series = factors @ rng.normal(size=(2, n_vertices)) + 0.3 * rng.normal(size=(40, n_vertices)) + 50
        path = tmp_path / f"{hemi}.func.mgz"
        nib.save(nib.MGHImage(series.T.reshape(n_vertices, 1, 1, 40).astype(np.float32), np.eye(4)), path)
        paths.append(str(path))
    data = {"data_path": paths, "surface_order": ["lh", "rh"], "split": "contiguous", "val_fraction": 0.1,
            "test_fraction": 0.25}
    ldm = {k: v for k, v in TINY["ldm"].items() if k != "conditioning"}
    config = write_config(tmp_path, tmp_path / "out", Path(paths[0]), data=data, ldm=ldm)
    main.main(main.parse_args(["--config", str(config), "--mode", "both"]))
    eval_dir = tmp_path / "out" / "eval"
    samples = np.load(eval_dir / "samples.npz")["samples"]
    for hemi, n_vertices, cols in (("lh", 12, slice(0, 12)), ("rh", 9, slice(12, 21))):
        img = nib.load(eval_dir / f"samples.{hemi}.mgz")
        assert img.shape == (n_vertices, 1, 1, samples.shape[0])
        np.testing.assert_allclose(img.get_fdata()[:, 0, 0, :].T, samples[:, cols], rtol=1e-6)
