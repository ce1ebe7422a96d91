"""GPU: training throughput and peak memory in fp32, fp16 and bf16 at whole-brain surface scale.

Trains the VAE and the denoiser for a few hundred steps per precision through Accelerate (the same
mixed-precision machinery as train_vae.py / train_ldm.py: autocast + gradient scaling for fp16) and
prints samples/s and peak CUDA memory. Needs a CUDA device; on a machine without one it says so and exits 0.

    python benchmarks/bench_gpu_precision.py --n_voxels 20000 --steps 300
"""

import argparse
import time

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from fmri_diffusers import FMRIVAE, FMRIDenoiser


def train_steps(kind: str, precision: str, n_voxels: int, batch_size: int, steps: int) -> tuple[float, float, float]:
    AcceleratorState._reset_state(reset_partial_state=True)  # one Accelerator per precision in one process
    accelerator = Accelerator(mixed_precision=precision)
    torch.manual_seed(0)
    if kind == "vae":
        model = FMRIVAE(n_voxels=n_voxels, latent_dim=256, hidden_dims=[1024, 512, 256])
        width = n_voxels
    else:
        model = FMRIDenoiser(latent_dim=256, hidden_dims=[1024, 512])
        width = 256
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, opt = accelerator.prepare(model, opt)
    data = torch.randn(4096, width, device=accelerator.device)
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 10):
        if i == 10:  # warm-up excluded (cuBLAS heuristics, allocator growth)
            torch.cuda.synchronize()
            start = time.perf_counter()
        x = data[torch.randint(0, data.shape[0], (batch_size,), device=data.device)]
        with accelerator.autocast():
            if kind == "vae":
                out = model(x)
                loss = torch.nn.functional.mse_loss(out.sample.float(), x) + 1e-4 * out.latent_dist.kl().mean()
            else:
                t = torch.randint(0, 1000, (batch_size,), device=x.device)
                loss = torch.nn.functional.mse_loss(model(x, t).sample.float(), torch.randn_like(x))
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return batch_size * steps / seconds, torch.cuda.max_memory_allocated() / 2**20, loss.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_voxels", type=int, default=20_000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA device: this benchmark needs a GPU (the CPU benchmarks stand alone). Nothing measured.")
        return
    print(f"GPU: {torch.cuda.get_device_name()} | torch {torch.__version__} | n_voxels {args.n_voxels:,} | "
          f"batch {args.batch_size} | {args.steps} timed steps")
    print("| model | precision | samples / s | peak memory (MiB) | final loss |")
    print("|---|---|---:|---:|---:|")
    for kind in ("vae", "denoiser"):
        for precision in ("no", "fp16", "bf16"):
            rate, mem, loss = train_steps(kind, precision, args.n_voxels, args.batch_size, args.steps)
            name = "fp32" if precision == "no" else precision
            print(f"| {kind} | {name} | {rate:,.0f} | {mem:,.0f} | {loss:.4f} |")


if __name__ == "__main__":
    main()
