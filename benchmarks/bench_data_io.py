"""Random-batch read speed and memory of the memory-mapped sources: .npy vs a datasets Arrow file.

Writes an (n_samples, n_voxels) float32 matrix (default 110,000 x 5,000 = 2.2 GB, larger than the
2 GB that trips naive loaders) as ``.npy`` and as a ``datasets`` Arrow file, chunk by chunk, then
for each source times ``load_fmri`` (which scans the file once for NaN/Inf) and random batches
read through ``load_fmri(...).data[idx]``, and prints a table. The files are deleted at the end.

Peak RSS is the kernel's VmHWM, reset before each phase (``/proc/self/clear_refs``). It counts
the pages of a memory-mapped file that the process touched (RssFile): those are page cache the
kernel can drop, not memory the reader allocated (RssAnon), so both are printed.

    python benchmarks/bench_data_io.py                      # 2.2 GB
    python benchmarks/bench_data_io.py --n_samples 20000    # quick
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from fmri_diffusers.data import load_fmri

CHUNK_ROWS = 4096  # rows generated and written at a time: 80 MB at 5,000 voxels


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--n_samples", type=int, default=110_000)
    parser.add_argument("--n_voxels", type=int, default=5_000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="reading time per source")
    parser.add_argument("--out_dir", type=str, default=None, help="default: a new temporary folder")
    return parser.parse_args()


def memory_mb() -> dict:
    """VmHWM (peak RSS), RssAnon and RssFile of this process in MB (Linux /proc)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def chunks(n_samples, n_voxels, seed=0):
    rng = np.random.default_rng(seed)
    for start in range(0, n_samples, CHUNK_ROWS):
        rows = min(CHUNK_ROWS, n_samples - start)
        yield rng.standard_normal((rows, n_voxels), dtype=np.float32)  # (rows, n_voxels)


def write_npy(path, n_samples, n_voxels):
    with open(path, "wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": (n_samples, n_voxels)}
        np.lib.format.write_array_header_2_0(f, header)
        for chunk in chunks(n_samples, n_voxels):
            chunk.tofile(f)


def write_arrow(path, n_samples, n_voxels):
    import datasets
    from datasets.arrow_writer import ArrowWriter

    features = datasets.Features({"x": datasets.List(datasets.Value("float32"), length=n_voxels)})
    with ArrowWriter(features=features, path=str(path)) as writer:
        for chunk in chunks(n_samples, n_voxels):
            column = pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), n_voxels)
            writer.write_table(pa.table({"x": column}))
        writer.finalize()


def bench(path, args, rng):
    reset_peak()
    start = time.perf_counter()
    fmri = load_fmri(path)
    open_s = time.perf_counter() - start
    open_peak = memory_mb()["VmHWM"]
    reset_peak()
    n_batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        idx = rng.integers(0, fmri.n_samples, size=args.batch_size)
        batch = fmri.data[idx]
        n_batches += 1
    elapsed = time.perf_counter() - start
    assert batch.shape == (args.batch_size, args.n_voxels) and batch.dtype == np.float32
    mem = memory_mb()
    return {
        "type": type(fmri.data).__name__,
        "open_s": open_s,
        "open_peak": open_peak,
        "samples_s": n_batches * args.batch_size / elapsed,
        "batch_ms": 1000 * elapsed / n_batches,
        **mem,
    }


def main():
    args = parse_args()
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="bench_data_io_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    gb = args.n_samples * args.n_voxels * 4 / 1e9
    print(f"matrix {args.n_samples} x {args.n_voxels} float32 = {gb:.2f} GB, "
          f"batches of {args.batch_size}, in {out_dir}")
    sources = {".npy (np.memmap)": out_dir / "x.npy", "Arrow (ArrowVectors)": out_dir / "x.arrow"}
    try:
        for (name, path), write in zip(sources.items(), (write_npy, write_arrow)):
            start = time.perf_counter()
            write(path, args.n_samples, args.n_voxels)
            print(f"wrote {name}: {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s")
        rng = np.random.default_rng(0)
        print(f"\n{'source':22} {'open+scan s':>11} {'samples/s':>10} {'ms/batch':>9} "
              f"{'peak RSS open MB':>16} {'peak RSS read MB':>16} {'RssAnon MB':>10} {'RssFile MB':>10}")
        for name, path in sources.items():
            r = bench(path, args, rng)
            print(f"{name:22} {r['open_s']:11.2f} {r['samples_s']:10.0f} {r['batch_ms']:9.3f} "
                  f"{r['open_peak']:16.0f} {r['VmHWM']:16.0f} {r['RssAnon']:10.0f} {r['RssFile']:10.0f}")
    finally:
        if args.out_dir:
            for path in sources.values():
                path.unlink(missing_ok=True)
        else:
            shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
