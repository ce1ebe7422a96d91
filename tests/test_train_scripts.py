"""train_vae.py and train_ldm.py end to end on tiny data; 2-rank DDP on CPU; bad input refused up front."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState

from fmri_diffusers import FMRIDenoiser, FMRILatentDiffusionPipeline
from fmri_diffusers.models.fmri_vae import FMRIVAE

import train_ldm
import train_vae

ROOT = Path(__file__).resolve().parents[1]
VAE_TINY, LDM_TINY = str(ROOT / "configs/vae_tiny.yaml"), str(ROOT / "configs/ldm_tiny.yaml")


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def write_tiny_data(folder: Path, n_voxels: int = 40) -> Path:
    """60 samples x n_voxels: 3 latent factors + noise, offset 100 (raw-BOLD-like units), labels 1/2."""
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(60, 3))
    x = factors @ rng.normal(size=(3, n_voxels)) + 0.3 * rng.normal(size=(60, n_voxels)) + 100.0
    path = folder / f"data{n_voxels}.npz"
    np.savez(path, data=x.astype(np.float32), labels=np.repeat([1, 2], 30))
    return path


def curve(output_dir, name: str) -> np.ndarray:
    records = [json.loads(line) for line in (Path(output_dir) / "train_log.jsonl").read_text().splitlines()]
    return np.array([r["value"] for r in records if r["name"] == name])


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def vae_run(data_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "vae"
    torch.set_num_threads(1)
    AcceleratorState._reset_state(True)
    train_vae.main(train_vae.parse_args(["--config", VAE_TINY, "--data_path", str(data_path), "--data_key", "data",
                                         "--label_key", "labels", "--output_dir", str(out)]))
    return out


# -- end to end ---------------------------------------------------------------------------------


def test_vae_run_writes_documented_layout_and_learns(vae_run, data_path):
    for name in ("vae/config.json", "vae_final/config.json", "data_config.json", "splits.npz", "train_log.jsonl",
                 "metrics.json", "logs/train.log", "checkpoint-20/training_state.json", "checkpoint-40"):
        assert (vae_run / name).exists(), name
    recon = curve(vae_run, "train/recon_mse")
    assert len(recon) == 40 and recon[-10:].mean() < 0.8 * recon[:10].mean()
    r = curve(vae_run, "val/pearson_r")
    assert len(r) == 2 and r[-1] > 0.5

    # Voxel statistics from the training split only.
    splits = np.load(vae_run / "splits.npz")
    x = np.load(data_path)["data"]
    vae = FMRIVAE.from_pretrained(vae_run / "vae")
    np.testing.assert_allclose(vae.voxel_stats.mean.numpy(), x[splits["train"]].mean(0), rtol=1e-5)
    config = json.loads((vae_run / "data_config.json").read_text())
    assert config["split_sizes"] == {k: len(splits[k]) for k in ("train", "val", "test")}
    assert config["split"] == "contiguous" and config["n_voxels"] == 40

    # vae/ is the best validation step; scaling_factor makes the latent samples unit-variance.
    metrics = json.loads((vae_run / "metrics.json").read_text())
    val_loss = curve(vae_run, "val/loss")
    assert metrics["best_val_loss"] == pytest.approx(val_loss.min())
    with torch.no_grad():
        posterior = vae.eval().encode(vae.normalize(torch.from_numpy(x[splits["train"]]))).latent_dist
        z = posterior.mean + posterior.std * torch.randn(2000, *posterior.mean.shape, generator=torch.Generator().manual_seed(0))
    assert (z * vae.config.scaling_factor).std().item() == pytest.approx(1.0, abs=0.03)

    # noise_std: the RMS residual of posterior-mean reconstructions on the validation split, per voxel.
    with torch.no_grad():
        val = vae.normalize(torch.from_numpy(x[splits["val"]]))
        residual = vae.decode(vae.encode(val).latent_dist.mode()).sample - val
    torch.testing.assert_close(vae.voxel_stats.noise_std, residual.pow(2).mean(0).sqrt(), rtol=1e-4, atol=1e-6)
    assert (vae.voxel_stats.noise_std > 0).all()


def test_ldm_run_writes_loadable_pipeline_in_data_units(vae_run, tmp_path):
    out = tmp_path / "ldm"
    summary = train_ldm.main(train_ldm.parse_args(["--config", LDM_TINY, "--output_dir", str(out),
                                                   "--pretrained_vae_model_name_or_path", str(vae_run)]))
    assert summary["global_step"] == 40 and summary["val_loss"] is not None
    loss = curve(out, "train/loss")
    assert len(loss) == 40 and loss[-10:].mean() < loss[:10].mean()
    # Data settings inherited from the VAE run, so the same split.
    vae_config = json.loads((vae_run / "data_config.json").read_text())
    ldm_config = json.loads((out / "data_config.json").read_text())
    assert ldm_config["data_path"] == vae_config["data_path"] and ldm_config["split_sizes"] == vae_config["split_sizes"]

    pipe = FMRILatentDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    samples = pipe(batch_size=5, num_inference_steps=10, generator=torch.Generator().manual_seed(0)).samples
    assert samples.shape == (5, 40) and np.isfinite(samples).all()
    assert abs(samples.mean() - 100.0) < 5.0  # user units (the data sit around 100), not z-scores
    assert pipe.scheduler.config.clip_sample is False
    best = FMRIVAE.from_pretrained(vae_run / "vae")
    torch.testing.assert_close(pipe.vae.state_dict(), best.state_dict())


def test_ldm_conditional_v_prediction_min_snr_and_push(vae_run, tmp_path, monkeypatch):
    pushed = {}
    monkeypatch.setattr(train_ldm, "push_folder_to_hub", lambda folder, repo_id, **kw: pushed.update(folder=folder, repo=repo_id))
    out = tmp_path / "cond"
    train_ldm.main(train_ldm.parse_args([
        "--config", LDM_TINY, "--output_dir", str(out), "--pretrained_vae_model_name_or_path", str(vae_run),
        "--max_train_steps", "6", "--conditioning", "label", "--prediction_type", "v_prediction",
        "--snr_gamma", "5", "--push_to_hub", "--hub_model_id", "me/tiny-ldm"]))
    assert json.loads((out / "data_config.json").read_text())["classes"] == [1, 2]
    assert pushed == {"folder": out, "repo": "me/tiny-ldm"} and "me/tiny-ldm" in (out / "README.md").read_text()
    pipe = FMRILatentDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.denoiser.config.num_class_embeds == 2 and pipe.scheduler.config.prediction_type == "v_prediction"
    samples = pipe(batch_size=2, num_inference_steps=4, class_labels=[0, 1], guidance_scale=2.0).samples
    assert samples.shape == (2, 40) and np.isfinite(samples).all()


def test_bf16_on_cpu_tensorboard_and_latest_without_checkpoint_starts_fresh(data_path, tmp_path):
    out = tmp_path / "bf16"
    summary = train_vae.main(train_vae.parse_args([
        "--config", VAE_TINY, "--data_path", str(data_path), "--data_key", "data", "--output_dir", str(out),
        "--max_train_steps", "3", "--mixed_precision", "bf16", "--resume_from_checkpoint", "latest",
        "--report_to", "tensorboard"]))
    assert summary["global_step"] == 3 and (out / "vae" / "config.json").exists()
    assert list((out / "logs" / "train_vae").glob("events.out.tfevents.*"))
    assert np.isfinite(curve(out, "train/loss")).all()
    assert FMRIVAE.from_pretrained(out / "vae").dtype == torch.float32


def test_without_validation_split_the_final_vae_is_used(data_path, tmp_path):
    vae_dir, ldm_dir = tmp_path / "vae", tmp_path / "ldm"
    train_vae.main(train_vae.parse_args(["--config", VAE_TINY, "--data_path", str(data_path), "--data_key", "data",
                                         "--output_dir", str(vae_dir), "--max_train_steps", "3", "--val_fraction", "0"]))
    torch.testing.assert_close(FMRIVAE.from_pretrained(vae_dir / "vae").state_dict(),
                               FMRIVAE.from_pretrained(vae_dir / "vae_final").state_dict())
    AcceleratorState._reset_state(True)
    summary = train_ldm.main(train_ldm.parse_args(["--config", LDM_TINY, "--pretrained_vae_model_name_or_path",
                                                   str(vae_dir), "--output_dir", str(ldm_dir), "--max_train_steps", "3"]))
    assert summary["val_loss"] is None and (ldm_dir / "model_index.json").is_file()


def test_two_ddp_ranks_on_cpu(vae_run, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "train_ldm.py"),
           "--config", LDM_TINY, "--pretrained_vae_model_name_or_path", str(vae_run), "--output_dir", str(out),
           "--max_train_steps", "4", "--checkpointing_steps", "2", "--validation_steps", "2"]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Num processes = 2" in (out / "logs" / "train.log").read_text()
    assert (out / "checkpoint-4" / "random_states_0.pkl").exists() and (out / "checkpoint-4" / "random_states_1.pkl").exists()
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2
    assert len(curve(out, "train/loss")) == 4  # one record per step, from the main process only
    FMRILatentDiffusionPipeline.from_pretrained(out)


# -- bad input: refused before training, nothing written ------------------------------------------


def vae_args(data_path, out, *extra):
    return train_vae.parse_args(["--config", VAE_TINY, "--data_path", str(data_path), "--data_key", "data",
                                 "--output_dir", str(out), *extra])


def ldm_args(vae, out, *extra):
    return train_ldm.parse_args(["--config", LDM_TINY, "--pretrained_vae_model_name_or_path", str(vae),
                                 "--output_dir", str(out), *extra])


def test_missing_data_path(tmp_path):
    with pytest.raises(ValueError, match=r"--data_path .*missing\.npz: no such file"):
        train_vae.main(vae_args(tmp_path / "missing.npz", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_fp16_on_cpu_is_refused(data_path, tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a GPU.*bf16"):
        train_vae.main(vae_args(data_path, tmp_path / "out", "--mixed_precision", "fp16"))
    assert not (tmp_path / "out").exists()


def test_batch_larger_than_train_split(data_path, tmp_path):
    with pytest.raises(ValueError, match=r"--train_batch_size 100 .* larger than the training split \(38 samples"):
        train_vae.main(vae_args(data_path, tmp_path / "out", "--train_batch_size", "100"))
    assert not (tmp_path / "out").exists()


def test_resume_from_checkpoint_naming_nothing(data_path, tmp_path):
    with pytest.raises(ValueError, match="--resume_from_checkpoint checkpoint-7: no complete checkpoint"):
        train_vae.main(vae_args(data_path, tmp_path / "out", "--resume_from_checkpoint", "checkpoint-7"))


def test_output_dir_holding_another_run_is_refused_then_overwritten(data_path, tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-99").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"already holds files.*--overwrite_output_dir"):
        train_vae.main(vae_args(data_path, out))
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-99", "notes.txt"]

    train_vae.main(vae_args(data_path, out, "--overwrite_output_dir", "--max_train_steps", "2"))
    assert not (out / "checkpoint-99").exists()  # the old run's checkpoint cannot be resumed by mistake
    assert (out / "notes.txt").read_text() == "mine" and (out / "vae").is_dir()


def test_vae_folder_that_is_not_a_vae(tmp_path):
    FMRIDenoiser(latent_dim=4, hidden_dims=[8]).save_pretrained(tmp_path / "denoiser")
    with pytest.raises(ValueError, match=r"describes a 'FMRIDenoiser', expected an 'FMRIVAE'"):
        train_ldm.main(ldm_args(tmp_path / "denoiser", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no VAE config.json in"):
        train_ldm.main(ldm_args(tmp_path / "empty", tmp_path / "out"))
    with pytest.raises(ValueError, match="not a folder or a reachable Hub repo"):
        train_ldm.main(ldm_args(tmp_path / "no" / "such" / "dir", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_vae_with_other_voxel_count(vae_run, tmp_path):
    other = write_tiny_data(tmp_path, n_voxels=30)
    with pytest.raises(ValueError, match=r"trained on 40 voxels, but the data .* have 30"):
        train_ldm.main(ldm_args(vae_run, tmp_path / "out", "--data_path", str(other), "--data_key", "data"))
    assert not (tmp_path / "out").exists()


def test_label_conditioning_without_labels(vae_run, tmp_path):
    x = np.load(json.loads((vae_run / "data_config.json").read_text())["data_path"][0])["data"]
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match="--conditioning label needs labels"):
        train_ldm.main(ldm_args(vae_run, tmp_path / "out", "--data_path", str(tmp_path / "x.npy"),
                                "--conditioning", "label"))
