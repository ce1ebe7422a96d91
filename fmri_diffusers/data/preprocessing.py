"""Per-voxel statistics of the training split, and a torch dataset that reads whole batches.

Applying the statistics is the VAE's job (``vae.normalize`` / ``vae.denormalize``); this module
only computes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Voxels whose std is at most this fraction of |mean| are constant up to float32 rounding
# (float32 resolves about 6e-8 relative); std == 0 is caught too since 0 <= 0.
_CONSTANT_RTOL = 1e-7
_N_POSITIONS = 5  # how many (sample, voxel) positions an error message names


@dataclass
class VoxelStats:
    """Per-voxel statistics, each ``(n_voxels,)``.

    ``mean``, ``std``: float32. ``mask``: bool, True = kept. Masked voxels have ``std = 1`` and
    ``mean`` = their finite training mean (0 if none), so normalising and denormalising are safe.
    """

    mean: np.ndarray
    std: np.ndarray
    mask: np.ndarray

    @property
    def n_kept(self) -> int:
        return int(self.mask.sum())


def _chunks(n_rows: int, chunk_size: int):
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for start in range(0, n_rows, chunk_size):
        yield slice(start, min(start + chunk_size, n_rows))


def _read_rows(data, rows: np.ndarray) -> np.ndarray:
    """``data[rows]`` as float64 ``(len(rows), n_voxels)``; ``rows`` sorted for memmap locality."""
    return np.asarray(data[rows], dtype=np.float64)


class _NonfiniteTally:
    """Counts NaN/Inf while chunks stream past and keeps the first few positions."""

    def __init__(self):
        self.count = 0
        self.positions: list[tuple[int, int]] = []

    def add(self, finite: np.ndarray, rows: np.ndarray) -> None:
        bad = ~finite
        n_bad = int(bad.sum())
        if n_bad and len(self.positions) < _N_POSITIONS:
            r, v = np.nonzero(bad)
            self.positions += [(int(rows[i]), int(j)) for i, j in zip(r, v)][: _N_POSITIONS - len(self.positions)]
        self.count += n_bad

    def message(self, what: str) -> str:
        where = ", ".join(f"(sample {s}, voxel {v})" for s, v in self.positions)
        return f"{what} holds {self.count} NaN/Inf values, first at {where}"


def check_finite(data, what: str = "data", *, chunk_size: int = 1024) -> None:
    """Raise ValueError if ``data`` ``(n_samples, n_voxels)`` holds NaN/Inf, saying how many and where.

    Streams ``chunk_size`` rows at a time, so memory-mapped data are never loaded whole.
    """
    tally = _NonfiniteTally()
    for rows in _chunks(len(data), chunk_size):
        chunk = np.asarray(data[rows])
        tally.add(np.isfinite(chunk), np.arange(rows.start, rows.stop))
    if tally.count:
        raise ValueError(tally.message(what) + "; pass nonfinite='mask' to keep them and mask those voxels")


def compute_voxel_stats(data, indices=None, *, chunk_size: int = 1024, nonfinite: str = "raise") -> VoxelStats:
    """Streamed per-voxel mean and std (population, ddof=0) of ``data[indices]``.

    Parameters
    ----------
    data : array-like (n_samples, n_voxels)
        ndarray, memmap or ArrowVectors; read ``chunk_size`` rows at a time.
    indices : int array or None
        Rows to use: pass the training split's indices, so that no validation or test sample
        leaks into the normalisation. None = all rows.
    chunk_size : int
        Rows per chunk; memory is about ``chunk_size * n_voxels * 8`` bytes.
    nonfinite : {"raise", "mask"}
        "raise": NaN/Inf raise ValueError with their count and first positions. "mask": voxels
        holding any NaN/Inf are masked out (their mean is that of their finite values).

    Returns
    -------
    VoxelStats
        Constant voxels (std <= 1e-7 |mean|) and, with "mask", non-finite voxels are masked out;
        the counts are logged. All voxels masked raises ValueError.

    Notes
    -----
    Chunks are merged with Chan et al.'s parallel update of (count, mean, M2) in float64, which
    stays accurate when the mean is large compared to the spread (raw scanner intensities).
    """
    if nonfinite not in ("raise", "mask"):
        raise ValueError(f"nonfinite must be 'raise' or 'mask', got {nonfinite!r}")
    if len(getattr(data, "shape", ())) != 2:
        raise ValueError(f"Expected shape (n_samples, n_voxels), got {getattr(data, 'shape', None)}")
    n_samples, n_voxels = data.shape
    rows_all = np.arange(n_samples) if indices is None else np.sort(np.asarray(indices, dtype=np.int64))
    if rows_all.size == 0:
        raise ValueError("compute_voxel_stats needs at least one sample index, got none")
    if rows_all[0] < 0 or rows_all[-1] >= n_samples:
        raise ValueError(f"indices must lie in [0, {n_samples}), got {rows_all[0]}..{rows_all[-1]}")

    count = np.zeros(n_voxels)  # finite values seen per voxel
    mean = np.zeros(n_voxels)
    m2 = np.zeros(n_voxels)  # sum of squared deviations from the mean
    tally = _NonfiniteTally()
    for part in _chunks(len(rows_all), chunk_size):
        rows = rows_all[part]
        x = _read_rows(data, rows)  # (chunk, n_voxels) float64
        finite = np.isfinite(x)
        tally.add(finite, rows)
        x = np.where(finite, x, 0.0)
        n_b = finite.sum(axis=0)
        mean_b = x.sum(axis=0) / np.maximum(n_b, 1)
        m2_b = (np.where(finite, x - mean_b, 0.0) ** 2).sum(axis=0)
        n_ab = count + n_b
        delta = mean_b - mean
        safe = np.maximum(n_ab, 1)
        mean = mean + delta * n_b / safe
        m2 = m2 + m2_b + delta**2 * count * n_b / safe
        count = n_ab

    if tally.count and nonfinite == "raise":
        raise ValueError(tally.message("The training data") + "; pass nonfinite='mask' to mask those voxels")
    std = np.sqrt(m2 / np.maximum(count, 1))
    has_nonfinite = count < len(rows_all)
    constant = ~has_nonfinite & (std <= _CONSTANT_RTOL * np.abs(mean))
    mask = ~(constant | has_nonfinite)
    logger.info(
        "Voxel statistics from %d samples: %d of %d voxels kept (%d constant, %d with NaN/Inf)",
        len(rows_all), mask.sum(), n_voxels, constant.sum(), has_nonfinite.sum(),
    )
    if not mask.any():
        raise ValueError(
            f"All {n_voxels} voxels are constant or non-finite over the {len(rows_all)} training "
            "samples: nothing to model"
        )
    std = np.where(mask, std, 1.0)
    return VoxelStats(mean=mean.astype(np.float32), std=std.astype(np.float32), mask=mask)


class VectorDataset(torch.utils.data.Dataset):
    """Rows ``data[indices]`` as float32 tensors, read a whole batch at a time.

    Parameters
    ----------
    data : array-like (n_samples, n_voxels)
        ndarray, memmap or ArrowVectors (anything where ``data[int_array]`` gives a batch).
    indices : int array or None
        The rows of this split (e.g. ``splits["train"]``); None = all.
    labels : int array (n_samples,) or None
        If given, items are dicts ``{"x": (B, n_voxels) float32, "labels": (B,) long}``.

    Notes
    -----
    torch's DataLoader calls ``__getitems__(positions)`` once per batch and then passes the
    result to ``collate_fn``. The batch is already a tensor (or dict of tensors), so use the
    identity collate::

        DataLoader(ds, batch_size=64, shuffle=True, collate_fn=VectorDataset.collate)

    (``VectorDataset.collate`` is a plain function, so it also pickles for ``num_workers > 0``.)
    """

    def __init__(self, data, indices=None, labels=None):
        if len(getattr(data, "shape", ())) != 2:
            raise ValueError(f"Expected shape (n_samples, n_voxels), got {getattr(data, 'shape', None)}")
        self.data = data
        self.indices = np.arange(len(data)) if indices is None else np.asarray(indices, dtype=np.int64)
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (len(data),):
                raise ValueError(f"Expected labels of shape ({len(data)},), got {labels.shape}")
            labels = torch.as_tensor(labels.astype(np.int64))
        self.labels = labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        return self._unbatch(self.__getitems__([position]))

    def __getitems__(self, positions):
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")  # sorted reads: memmap / Arrow locality
        batch = np.empty((len(rows), self.data.shape[1]), dtype=np.float32)
        batch[order] = self.data[rows[order]]  # one fancy-index read, original order restored
        x = torch.from_numpy(batch)  # (B, n_voxels)
        if self.labels is None:
            return x
        return {"x": x, "labels": self.labels[torch.from_numpy(rows)]}

    @staticmethod
    def _unbatch(batch):
        return batch[0] if torch.is_tensor(batch) else {k: v[0] for k, v in batch.items()}

    @staticmethod
    def collate(batch):
        """Identity collate: ``__getitems__`` already returns the stacked batch."""
        return batch
