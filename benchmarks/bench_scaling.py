"""How training cost and memory grow with the number of voxels and with the dataset size.

Each configuration runs in a fresh subprocess so that its peak resident memory (VmHWM) is its own.
Prints one table per experiment and the fitted growth exponent (slope of log time vs log size).

    python benchmarks/bench_scaling.py                 # 1k, 3k, 20k, 100k voxels; 1k-8k samples
    python benchmarks/bench_scaling.py --quick         # smaller sizes, for a smoke run
"""

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(kind: str, n_voxels: int, n_samples: int, batch_size: int, steps: int) -> dict:
    """Time `steps` optimizer steps of one model (after 3 warm-up steps) in this process."""
    import torch

    from fmri_diffusers import FMRIVAE, FMRIDenoiser

    torch.manual_seed(0)
    torch.set_num_threads(2)
    if kind == "vae":
        model = FMRIVAE(n_voxels=n_voxels, latent_dim=256, hidden_dims=[1024, 512, 256])
        data = torch.randn(n_samples, n_voxels)

        def loss_fn(x):
            out = model(x)
            return torch.nn.functional.mse_loss(out.sample, x) + 1e-4 * out.latent_dist.kl().mean() / n_voxels
    elif kind == "denoiser":
        model = FMRIDenoiser(latent_dim=256, hidden_dims=[512, 256])
        data = torch.randn(n_samples, 256)

        def loss_fn(x):
            t = torch.randint(0, 1000, (x.shape[0],))
            return torch.nn.functional.mse_loss(model(x, t).sample, torch.randn_like(x))
    elif kind == "encode_epoch":
        # Encoding a whole dataset to latents once (what train_ldm.py does before training).
        model = FMRIVAE(n_voxels=n_voxels, latent_dim=256, hidden_dims=[1024, 512, 256]).eval()
        data = torch.randn(n_samples, n_voxels)
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, n_samples, 256):
                model.encode(data[i:i + 256])
        return {"seconds": time.perf_counter() - start, "peak_mb": peak_rss_mb()}
    elif kind == "metrics":
        # The whole generation suite (FD, MMD, KS, correlation structure, C2ST, P/R, DCR) at n_voxels.
        from fmri_diffusers.report import evaluate_generated

        rng = np.random.default_rng(0)
        train = rng.standard_normal((n_samples, n_voxels), dtype=np.float32)
        heldout = rng.standard_normal((200, n_voxels), dtype=np.float32)
        generated = {"model": rng.standard_normal((200, n_voxels), dtype=np.float32)}
        start = time.perf_counter()
        evaluate_generated(train, heldout, generated, n_boot=50)
        return {"seconds": time.perf_counter() - start, "peak_mb": peak_rss_mb()}
    else:
        raise ValueError(f"unknown kind {kind!r}")

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = np.random.default_rng(0)
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        x = data[torch.from_numpy(gen.integers(0, n_samples, batch_size))]
        opt.zero_grad(set_to_none=True)
        loss_fn(x).backward()
        opt.step()
    per_step = (time.perf_counter() - start) / steps
    return {"seconds": per_step, "peak_mb": peak_rss_mb(), "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def in_subprocess(kind, n_voxels, n_samples, batch_size, steps) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r}); import bench_scaling as b; "
            f"print(json.dumps(b.run_one({kind!r}, {n_voxels}, {n_samples}, {batch_size}, {steps})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    voxels = [1_000, 3_000, 20_000] if args.quick else [1_000, 3_000, 20_000, 100_000]
    sizes = [500, 1_000, 2_000] if args.quick else [1_000, 2_000, 4_000, 8_000]

    print(f"## Training step vs n_voxels (batch {args.batch_size}, VAE hidden 1024/512/256, latent 256, 2 threads)")
    print("| model | n_voxels | ms / step | samples / s | params (M) | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    times = []
    for v in voxels:
        r = in_subprocess("vae", v, 512, args.batch_size, args.steps)
        times.append(r["seconds"])
        print(f"| VAE | {v:,} | {1e3 * r['seconds']:.1f} | {args.batch_size / r['seconds']:,.0f} | "
              f"{r['params_m']:.1f} | {r['peak_mb']:,.0f} |")
    d = in_subprocess("denoiser", 1_000, 512, args.batch_size, args.steps)
    print(f"| denoiser (latent 256, any n_voxels) | - | {1e3 * d['seconds']:.1f} | "
          f"{args.batch_size / d['seconds']:,.0f} | {d['params_m']:.1f} | {d['peak_mb']:,.0f} |")
    print(f"\nVAE step time grows as n_voxels^{slope(voxels, times):.2f} "
          f"(fit over {voxels[0]:,}-{voxels[-1]:,}; 1.0 = linear). The denoiser never sees voxels.\n")

    print("## Encoding the dataset to latents once vs dataset size (n_voxels 20,000)")
    print("| n_samples | seconds | samples / s | peak RSS (MB) |")
    print("|---:|---:|---:|---:|")
    enc = []
    for n in sizes:
        r = in_subprocess("encode_epoch", 20_000, n, args.batch_size, args.steps)
        enc.append(r["seconds"])
        print(f"| {n:,} | {r['seconds']:.2f} | {n / r['seconds']:,.0f} | {r['peak_mb']:,.0f} |")
    print(f"\nEncoding time grows as n_samples^{slope(sizes, enc):.2f} (1.0 = linear).\n")

    v = 20_000
    r = in_subprocess("metrics", v, 1_000, args.batch_size, args.steps)
    print(f"## Evaluation suite at {v:,} voxels (1,000 train, 200 held-out, 200 generated; inputs "
          f"{(1_400 * v * 4) / 2**20:,.0f} MB)")
    print(f"{r['seconds']:.1f} s, peak RSS {r['peak_mb']:,.0f} MB; one dense {v:,} x {v:,} float64 correlation "
          f"matrix alone would take {v * v * 8 / 2**20:,.0f} MB.")


if __name__ == "__main__":
    main()
