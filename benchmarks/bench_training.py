#!/usr/bin/env python
"""Training throughput of train_vae.py / train_ldm.py against a plain PyTorch loop on the same model and batch.

    python benchmarks/bench_training.py            # ~2-3 minutes on 2 CPU cores
    python benchmarks/bench_training.py --steps 100 --threads 2 --compile

Rows (samples/s, best of ``--repeats``):

- ``vae step``: ``train_vae.main`` for ``--steps`` optimizer steps (its own timer covers the loop only: no
  setup, validation, checkpoint or final save) vs a bare loop (normalize -> VAE -> loss -> backward ->
  clip -> AdamW) over an in-memory tensor. The ratio script / plain is the cost of Accelerate, the
  DataLoader over ``VectorDataset``, logging and the progress bar.
- ``ldm step``: the same for ``train_ldm.main`` (latents encoded once) vs a bare DDPM loop.
- ``ldm, encode every step``: the bare loop reading raw patterns and encoding them through the frozen
  VAE at each step, which encoding once replaces.
- ``ldm, torch.compile`` (``--compile``): the bare loop with ``torch.compile(denoiser)`` (after warm-up).
"""

import argparse
import contextlib
import importlib.util
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402

from fmri_diffusers.models.fmri_denoiser import FMRIDenoiser  # noqa: E402
from fmri_diffusers.models.fmri_vae import FMRIVAE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(module, argv: list[str]) -> float:
    """Samples/s as the script measures its own loop (its progress bar silenced)."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    with contextlib.redirect_stderr(io.StringIO()):
        return module.main(module.parse_args(argv))["train_samples_per_second"]


def timed(step, steps: int, batch: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def plain_vae(vae: FMRIVAE, data: torch.Tensor, batch: int, lr: float):
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-6)
    mask = vae.voxel_stats.mask
    gen = torch.Generator().manual_seed(0)

    def step():
        x = vae.normalize(data[torch.randint(0, len(data), (batch,), generator=gen)])
        out = vae(x)
        recon = ((out.sample - x).pow(2) * mask).sum(1).mean() / mask.sum()
        loss = recon + out.latent_dist.kl().mean() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def plain_ldm(denoiser, vae: FMRIVAE, data: torch.Tensor, batch: int, lr: float, encode_each_step: bool):
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=lr, weight_decay=1e-6)
    with torch.no_grad():
        posterior = vae.encode(vae.normalize(data)).latent_dist
        mean, std = posterior.mean, posterior.std  # (n, latent_dim), encoded once
    sf = vae.config.scaling_factor
    gen = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        if encode_each_step:
            with torch.no_grad():
                post = vae.encode(vae.normalize(data[idx])).latent_dist
                latents = post.sample() * sf
        else:
            latents = (mean[idx] + std[idx] * torch.randn(batch, mean.shape[1])) * sf
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,))
        pred = denoiser(scheduler.add_noise(latents, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved rounds; the best of each case is kept.")
    parser.add_argument("--n_samples", type=int, default=2048)
    parser.add_argument("--n_voxels", type=int, default=3092, help="As the digit69 data set.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine).")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="Also time torch.compile(denoiser) (compiling takes ~50 s on 2 cores).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # the scripts' INFO lines would drown the table
    train_vae, train_ldm = load_script("train_vae"), load_script("train_ldm")

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(args.n_samples, 16)) @ rng.normal(size=(16, args.n_voxels))
         + rng.normal(size=(args.n_samples, args.n_voxels)) + 500.0).astype(np.float32)
    data = torch.from_numpy(x)
    n_train = int(args.n_samples * 0.8)  # contiguous split with val 0, test 0.2 (gap samples aside)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "data.npy", x)
        common = ["--data_path", str(tmp / "data.npy"), "--max_train_steps", str(args.steps), "--train_batch_size",
                  str(args.batch_size), "--val_fraction", "0", "--checkpointing_steps", "100000",
                  "--validation_steps", "100000", "--report_to", "none", "--lr_warmup_steps", "0",
                  "--overwrite_output_dir"]
        # A VAE with the default architecture (untrained weights time the same) for the LDM rows.
        torch.manual_seed(0)
        vae = FMRIVAE(n_voxels=args.n_voxels)
        vae.set_voxel_statistics(x[:n_train].mean(0), x[:n_train].std(0))
        vae.save_pretrained(tmp / "vae_model")
        vae.eval()  # dropout off for the frozen encoder; the plain VAE loop gets a fresh model below

        ldm_argv = common + ["--pretrained_vae_model_name_or_path", str(tmp / "vae_model"), "--output_dir",
                             str(tmp / "ldm_run")]

        def make_denoiser():
            torch.manual_seed(0)
            return FMRIDenoiser(latent_dim=vae.config.latent_dim)

        def plain_vae_rate():
            torch.manual_seed(0)
            step = plain_vae(FMRIVAE(n_voxels=args.n_voxels).train(), data[:n_train], args.batch_size, 1e-4)
            return timed(step, args.steps, args.batch_size)

        cases = {
            "vae script": lambda: run_script(train_vae, common + ["--output_dir", str(tmp / "vae_run")]),
            "vae plain": plain_vae_rate,
            "ldm script": lambda: run_script(train_ldm, ldm_argv),
            "ldm plain": lambda: timed(plain_ldm(make_denoiser(), vae, data[:n_train], args.batch_size, 1e-4, False),
                                       args.steps, args.batch_size),
            "ldm encode": lambda: timed(plain_ldm(make_denoiser(), vae, data[:n_train], args.batch_size, 1e-4, True),
                                        args.steps, args.batch_size),
        }
        # Rounds interleave the cases, so that load from other processes hits them alike; best of the rounds.
        for _ in range(args.repeats):
            for name, run in cases.items():
                results[name] = max(results.get(name, 0.0), run())
        compile_note = "skipped (--no-compile)"
        if args.compile:
            try:
                start = time.perf_counter()
                step = plain_ldm(torch.compile(make_denoiser()), vae, data[:n_train], args.batch_size, 1e-4, False)
                step()  # compiles forward and backward
                compile_s = time.perf_counter() - start
                results["ldm compiled"] = max(timed(step, args.steps, args.batch_size) for _ in range(args.repeats))
                compile_note = f"compile time {compile_s:.1f} s"
            except Exception as err:  # report, do not hide: the table says why there is no number
                compile_note = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:100]}"

    r = results
    rows = [
        ("vae step: train_vae.py", r["vae script"], f"{r['vae script'] / r['vae plain']:.3f} x plain"),
        ("vae step: plain loop", r["vae plain"], ""),
        ("ldm step: train_ldm.py (latents once)", r["ldm script"], f"{r['ldm script'] / r['ldm plain']:.3f} x plain"),
        ("ldm step: plain loop (latents once)", r["ldm plain"], ""),
        ("ldm step: plain loop, encode every step", r["ldm encode"],
         f"latents once = {r['ldm plain'] / r['ldm encode']:.2f} x faster"),
    ]
    if "ldm compiled" in r:
        rows.append(("ldm step: plain loop, torch.compile", r["ldm compiled"],
                     f"{r['ldm compiled'] / r['ldm plain']:.2f} x eager; {compile_note}"))
    else:
        rows.append(("ldm step: plain loop, torch.compile", float("nan"), compile_note))
    print(f"\n{args.n_samples} x {args.n_voxels} float32, batch {args.batch_size}, {args.steps} steps, "
          f"best of {args.repeats}, torch {torch.__version__}, {args.threads} thread(s), CPU")
    print(f"{'case':<42} {'samples/s':>10}  note")
    for name, value, note in rows:
        print(f"{name:<42} {value:>10.0f}  {note}")


if __name__ == "__main__":
    sys.exit(main())
