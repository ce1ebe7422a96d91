"""A stopped or killed run resumes from its last complete checkpoint and continues the SAME run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from fmri_diffusers.models.fmri_denoiser import FMRIDenoiser
from fmri_diffusers.models.fmri_vae import FMRIVAE
from fmri_diffusers.training import MetricLog, epoch_batches, find_checkpoint, replace_dir

import train_ldm
import train_vae

ROOT = Path(__file__).resolve().parents[1]
VAE_TINY, LDM_TINY = str(ROOT / "configs/vae_tiny.yaml"), str(ROOT / "configs/ldm_tiny.yaml")


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 40)) + 0.3 * rng.normal(size=(60, 40)) + 50.0
    path = tmp_path_factory.mktemp("data") / "data.npz"
    np.savez(path, data=x.astype(np.float32), labels=np.repeat([3, 5, 7], 20))
    return path


def curves(output_dir) -> dict[str, np.ndarray]:
    """name -> values in step order, from train_log.jsonl (one record per step and name expected)."""
    records = [json.loads(line) for line in (Path(output_dir) / "train_log.jsonl").read_text().splitlines()]
    steps = {}
    for r in records:
        steps.setdefault(r["name"], []).append((r["step"], r["value"]))
    for name, pairs in steps.items():
        assert [s for s, _ in pairs] == sorted({s for s, _ in pairs}), f"duplicate or unordered steps in {name}"
    return {name: np.array([v for _, v in pairs]) for name, pairs in steps.items()}


def assert_same_run(a, b) -> None:
    ca, cb = curves(a), curves(b)
    assert ca.keys() == cb.keys()
    for name in ca:
        np.testing.assert_allclose(cb[name], ca[name], rtol=1e-5, atol=1e-7, err_msg=name)


# -- pieces ---------------------------------------------------------------------------------------


def test_epoch_batches_are_disjoint_rank_slices_of_a_seeded_permutation():
    r0 = epoch_batches(50, 8, epoch=3, seed=0, rank=0, world=2)
    r1 = epoch_batches(50, 8, epoch=3, seed=0, rank=1, world=2)
    assert len(r0) == len(r1) == 3  # 50 // 16: the incomplete global batch is dropped
    seen = np.concatenate([np.concatenate([a, b]) for a, b in zip(r0, r1)])
    np.testing.assert_array_equal(seen, np.random.default_rng(3).permutation(50)[:48])
    assert all(np.array_equal(a, b) for a, b in zip(r0, epoch_batches(50, 8, epoch=3, seed=0, rank=0, world=2)))
    assert not np.array_equal(r0[0], epoch_batches(50, 8, epoch=4, seed=0)[0])


def test_latest_ignores_unfinished_tmp_checkpoints(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-30.tmp").mkdir()
    (tmp_path / "checkpoint-x").mkdir()
    assert find_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-10"  # numeric order, .tmp ignored
    assert find_checkpoint(tmp_path, "checkpoint-2") == tmp_path / "checkpoint-2"
    assert find_checkpoint(tmp_path / "none", "latest") is None
    with pytest.raises(ValueError, match="checkpoint-30.tmp: no complete checkpoint"):
        find_checkpoint(tmp_path, "checkpoint-30.tmp")


def test_replace_dir_swaps_a_complete_folder(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "w").write_text("new")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "w").write_text("old")
    (tmp_path / "dst.old").mkdir()  # left by a run killed mid-swap
    replace_dir(tmp_path / "new", tmp_path / "dst")
    assert (tmp_path / "dst" / "w").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_replace_dir_restores_a_lone_old_copy_before_swapping(tmp_path, monkeypatch):
    """Killed between the two renames: only dst.old is complete. The next swap must not delete it first."""
    (tmp_path / "dst.old").mkdir()
    (tmp_path / "dst.old" / "w").write_text("previous")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "w").write_text("new")
    calls = []
    real_replace = os.replace

    def replace_and_record(a, b):
        calls.append((Path(a).name, Path(b).name))
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace_and_record)
    replace_dir(tmp_path / "new", tmp_path / "dst")
    monkeypatch.undo()
    assert calls[0] == ("dst.old", "dst")  # the complete copy is put back before anything is removed
    assert (tmp_path / "dst" / "w").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_metric_log_drops_records_after_the_resume_step(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text('{"step": 1, "name": "a", "value": 1.0}\n{"step": 3, "name": "a", "value": 3.0}\n{"step": 4, "na')
    log = MetricLog(Accelerator(), path, resume_step=2)
    log.log({"a": 2.5}, step=3)
    assert [json.loads(line)["value"] for line in path.read_text().splitlines()] == [1.0, 2.5]


# -- whole runs -----------------------------------------------------------------------------------


def test_ldm_stopped_and_resumed_matches_uninterrupted(data_path, tmp_path):
    vae_dir = tmp_path / "vae"
    train_vae.main(train_vae.parse_args(["--config", VAE_TINY, "--data_path", str(data_path), "--data_key", "data",
                                         "--label_key", "labels", "--output_dir", str(vae_dir),
                                         "--max_train_steps", "10"]))
    # Accumulation, EMA, warm-up, conditioning with condition dropout: all of it must resume exactly.
    common = ["--config", LDM_TINY, "--pretrained_vae_model_name_or_path", str(vae_dir), "--gradient_accumulation_steps",
              "2", "--train_batch_size", "4", "--lr_warmup_steps", "3", "--checkpointing_steps", "2",
              "--checkpoints_total_limit", "2", "--validation_steps", "2", "--conditioning", "label",
              "--condition_dropout", "0.3", "--snr_gamma", "5"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    train_ldm.main(train_ldm.parse_args(common + ["--output_dir", str(full), "--max_train_steps", "8"]))
    AcceleratorState._reset_state(True)
    train_ldm.main(train_ldm.parse_args(common + ["--output_dir", str(stopped), "--max_train_steps", "4"]))
    # A run killed while writing checkpoint-6 leaves a .tmp folder and a torn log line.
    (stopped / "checkpoint-6.tmp").mkdir()
    (stopped / "checkpoint-6.tmp" / "junk").write_text("half")
    with (stopped / "train_log.jsonl").open("a") as f:
        f.write('{"step": 5, "name": "train/lo')
    AcceleratorState._reset_state(True)
    summary = train_ldm.main(train_ldm.parse_args(common + ["--output_dir", str(stopped), "--max_train_steps", "8",
                                                            "--resume_from_checkpoint", "latest"]))

    assert summary["global_step"] == 8
    assert_same_run(full, stopped)
    assert sorted(p.name for p in stopped.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]  # limit 2, no .tmp
    a = FMRIDenoiser.from_pretrained(full / "denoiser").state_dict()
    b = FMRIDenoiser.from_pretrained(stopped / "denoiser").state_dict()
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_vae_killed_with_sigkill_resumes_as_the_same_run(data_path, tmp_path):
    common = ["--config", VAE_TINY, "--data_path", str(data_path), "--data_key", "data", "--checkpointing_steps", "3",
              "--validation_steps", "3", "--lr_scheduler", "constant"]  # 3: not a multiple of the 4 batches per epoch
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_vae.py"), *common, "--output_dir", str(killed),
                             "--max_train_steps", "100000"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "checkpoint-6").is_dir():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its 2nd checkpoint"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()

    latest = find_checkpoint(killed, "latest")
    stop_step = int(latest.name.split("-")[1])
    total = str(stop_step + 8)  # 8 steps beyond wherever the kill struck
    summary = train_vae.main(train_vae.parse_args(common + ["--output_dir", str(killed), "--max_train_steps", total,
                                                            "--resume_from_checkpoint", "latest"]))
    assert summary["global_step"] == stop_step + 8
    AcceleratorState._reset_state(True)
    full = tmp_path / "full"
    train_vae.main(train_vae.parse_args(common + ["--output_dir", str(full), "--max_train_steps", total]))

    assert_same_run(full, killed)
    a = FMRIVAE.from_pretrained(full / "vae_final").state_dict()
    b = FMRIVAE.from_pretrained(killed / "vae_final").state_dict()
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
