"""Train / validation / test splits that do not leak between them."""

from __future__ import annotations

import numpy as np

STRATEGIES = ("contiguous", "run", "subject", "keys", "random")


def _count(fraction: float, n: int, name: str) -> int:
    """Samples for ``fraction`` of ``n``: at least 1 when the fraction is positive."""
    if not 0 <= fraction < 1:
        raise ValueError(f"{name} must be in [0, 1), got {fraction}")
    return max(1, round(fraction * n)) if fraction > 0 else 0


def _check_known(requested, existing, what: str) -> list:
    requested = [requested] if isinstance(requested, (str, int, np.integer)) else list(requested)
    unknown = [r for r in requested if r not in set(existing.tolist())]
    if unknown:
        raise ValueError(f"Unknown {what} {unknown}; existing: {sorted(existing.tolist())}")
    return requested


def _random_split(indices: np.ndarray, fractions: dict, rng) -> dict:
    """Shuffle ``indices`` and cut off ``fractions`` (name -> fraction of len(indices)); rest is train."""
    indices = rng.permutation(indices)
    out, start = {}, 0
    for name, fraction in fractions.items():
        n = _count(fraction, len(indices), f"{name}_fraction")
        out[name] = indices[start : start + n]
        start += n
    if start >= len(indices):
        raise ValueError(
            f"Too few samples: {len(indices)} given, the split needs at least {start + 1} "
            f"(1 train + {start} for {', '.join(fractions)})"
        )
    out["train"] = indices[start:]
    return out


def _contiguous_split(fmri, val_fraction, test_fraction, gap) -> dict:
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    out = {"train": [], "val": [], "test": []}
    groups = np.stack([fmri.subjects.astype(str), fmri.runs.astype(str)], axis=1)
    for subject, run in np.unique(groups, axis=0):
        idx = np.flatnonzero((fmri.subjects == subject) & (fmri.runs == int(run)))  # in time order
        n = len(idx)
        n_val = _count(val_fraction, n, "val_fraction")
        n_test = _count(test_fraction, n, "test_fraction")
        n_gaps = gap * ((n_val > 0) + (n_test > 0))
        n_train = n - n_val - n_test - n_gaps
        if n_train < 1:
            raise ValueError(
                f"Too few samples in subject {subject} run {run}: {n} given, the contiguous split "
                f"needs at least {n_val + n_test + n_gaps + 1} (1 train + {n_val} val + {n_test} test "
                f"+ {n_gaps} gap samples); lower the fractions or the gap"
            )
        # [train][gap][val][gap][test] in time; gap samples belong to no split.
        out["train"].append(idx[:n_train])
        start = n_train + (gap if n_val else 0)
        out["val"].append(idx[start : start + n_val])
        out["test"].append(idx[n - n_test :])
    return {k: np.concatenate(v) for k, v in out.items()}


def _held_out(fmri, column: np.ndarray, held, what: str, val_fraction, rng) -> dict:
    existing = np.unique(column)
    if held is None:
        if len(existing) < 2:
            raise ValueError(f"Holding out {what}s needs at least 2, got {existing.tolist()}")
        held = [existing[-1]]  # default: the last one
    held = _check_known(held, existing, what)
    is_test = np.isin(column, held)
    if is_test.all():
        raise ValueError(f"Every {what} is held out for test ({held}); keep at least one for training")
    out = _random_split(np.flatnonzero(~is_test), {"val": val_fraction}, rng)
    out["test"] = np.flatnonzero(is_test)
    return out


def make_splits(fmri, strategy: str = "contiguous", *, val_fraction: float = 0.1, test_fraction: float = 0.2,
                gap: int = 2, seed: int = 0, test_keys=None, val_keys=None, test_runs=None,
                test_subjects=None) -> dict[str, np.ndarray]:
    """Split the samples of an :class:`FMRIData` into train / val / test.

    Parameters
    ----------
    fmri : FMRIData
    strategy : {"contiguous", "run", "subject", "keys", "random"}
        - "contiguous" (time series): within each (subject, run), consecutive blocks in time:
          train first, then ``gap`` dropped samples, val, ``gap`` dropped samples, test. The BOLD
          signal is autocorrelated over several seconds, so a randomly drawn test volume has
          near-copies (its neighbours in time) in the training set and test scores come out
          optimistic; blocks with a gap keep neighbours apart.
        - "run": hold out whole runs (``test_runs``; default the last run) for test.
        - "subject": hold out whole subjects (``test_subjects``; default the last, sorted).
        - "keys": the file's own split, e.g. ``test_keys=["fmriTest"]``; ``val_keys`` or, without
          it, a random ``val_fraction`` of the remaining samples.
        - "random" (independent trials): a seeded random permutation.
        For "run", "subject" and "keys" (without ``val_keys``), val is a seeded random
        ``val_fraction`` of the training samples: it monitors training; test stays held out.
    val_fraction, test_fraction : float
        Fractions of the samples (per run for "contiguous"); a positive fraction gives at least 1
        sample. ``val_fraction=0`` gives an empty val split.
    gap : int
        "contiguous" only: samples dropped between blocks (about the autocorrelation length in
        samples; 2 volumes of TR 2 s = 4 s).
    seed : int
        Seed of the random choices.

    Returns
    -------
    dict
        ``{"train", "val", "test"}`` -> sorted int64 index arrays; no sample is in two of them.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown split strategy {strategy!r}; expected one of {list(STRATEGIES)}")
    rng = np.random.default_rng(seed)
    n = fmri.n_samples
    if strategy == "contiguous":
        splits = _contiguous_split(fmri, val_fraction, test_fraction, gap)
    elif strategy == "random":
        splits = _random_split(np.arange(n), {"val": val_fraction, "test": test_fraction}, rng)
    elif strategy == "run":
        splits = _held_out(fmri, fmri.runs, test_runs, "run", val_fraction, rng)
    elif strategy == "subject":
        splits = _held_out(fmri, fmri.subjects, test_subjects, "subject", val_fraction, rng)
    else:
        existing = np.unique(fmri.keys)
        if test_keys is None:
            raise ValueError(f"strategy='keys' needs test_keys; the file's keys are {existing.tolist()}")
        is_test = np.isin(fmri.keys, _check_known(test_keys, existing, "key"))
        if val_keys is not None:
            is_val = np.isin(fmri.keys, _check_known(val_keys, existing, "key")) & ~is_test
            splits = {"train": np.flatnonzero(~is_test & ~is_val), "val": np.flatnonzero(is_val)}
        else:
            splits = _random_split(np.flatnonzero(~is_test), {"val": val_fraction}, rng)
        splits["test"] = np.flatnonzero(is_test)
        if len(splits["train"]) == 0:
            raise ValueError(f"No training samples left after holding out keys {test_keys} / {val_keys}")
    splits = {k: np.sort(splits[k]).astype(np.int64) for k in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == len(np.unique(np.concatenate(list(splits.values()))))
    return splits
