"""Splits: no sample in two splits, blocks in time, held-out groups, clear errors."""

import numpy as np
import pytest

from fmri_diffusers.data import FMRIData, load_example, make_splits


def make_fmri(runs=(20, 20), subjects=None, keys=None) -> FMRIData:
    n = sum(runs)
    return FMRIData(
        data=np.zeros((n, 3), np.float32),
        subjects=np.array(subjects if subjects is not None else ["sub-01"] * n),
        runs=np.repeat(np.arange(len(runs)), runs),
        labels=None,
        keys=np.array(keys if keys is not None else [""] * n),
        space=None,
        source="test",
    )


def assert_disjoint(splits, n):
    together = np.concatenate(list(splits.values()))
    assert len(together) == len(np.unique(together)), "a sample is in two splits"
    assert together.min() >= 0 and together.max() < n
    for idx in splits.values():
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # sorted, unique


def test_contiguous_blocks_with_gaps_per_run():
    fmri = make_fmri(runs=(20, 10))
    splits = make_splits(fmri, val_fraction=0.1, test_fraction=0.2, gap=2)
    assert_disjoint(splits, 30)
    # run 0 (samples 0-19, 2 val, 4 test): train 0-9, gap 10-11, val 12-13, gap 14-15, test 16-19
    # run 1 (samples 20-29, 1 val, 2 test): train 20-22, gap 23-24, val 25, gap 26-27, test 28-29
    np.testing.assert_array_equal(splits["train"], list(range(0, 10)) + [20, 21, 22])
    np.testing.assert_array_equal(splits["val"], [12, 13, 25])
    np.testing.assert_array_equal(splits["test"], [16, 17, 18, 19, 28, 29])


def test_contiguous_without_val_and_gap_samples_dropped():
    splits = make_splits(make_fmri(runs=(10,)), val_fraction=0.0, test_fraction=0.3, gap=1)
    assert len(splits["val"]) == 0
    np.testing.assert_array_equal(splits["train"], range(6))
    np.testing.assert_array_equal(splits["test"], [7, 8, 9])  # 6 dropped


def test_contiguous_too_few_samples_says_how_many():
    with pytest.raises(ValueError, match=r"subject sub-01 run 1: 5 given, .*needs at least 7"):
        make_splits(make_fmri(runs=(20, 5)), val_fraction=0.1, test_fraction=0.2, gap=2)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_is_seeded_and_disjoint(seed):
    fmri = make_fmri(runs=(50,))
    a = make_splits(fmri, "random", seed=seed)
    b = make_splits(fmri, "random", seed=seed)
    assert_disjoint(a, 50)
    assert sum(map(len, a.values())) == 50 and (len(a["val"]), len(a["test"])) == (5, 10)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(make_splits(fmri, "random", seed=seed + 2)["test"], a["test"])


def test_run_strategy_holds_out_whole_runs():
    fmri = make_fmri(runs=(10, 10, 10))
    splits = make_splits(fmri, "run", test_runs=[1])
    assert_disjoint(splits, 30)
    np.testing.assert_array_equal(splits["test"], range(10, 20))
    assert not np.isin(np.concatenate([splits["train"], splits["val"]]), range(10, 20)).any()
    np.testing.assert_array_equal(make_splits(fmri, "run")["test"], range(20, 30))  # default: last run
    with pytest.raises(ValueError, match=r"Unknown run \[7\]; existing: \[0, 1, 2\]"):
        make_splits(fmri, "run", test_runs=[7])


def test_subject_strategy():
    fmri = make_fmri(runs=(6, 6), subjects=["a"] * 6 + ["b"] * 6)
    splits = make_splits(fmri, "subject", test_subjects="a", val_fraction=0.2)
    assert_disjoint(splits, 12)
    np.testing.assert_array_equal(splits["test"], range(6))
    assert len(splits["val"]) == 1
    with pytest.raises(ValueError, match=r"Unknown subject \['c'\]; existing: \['a', 'b'\]"):
        make_splits(fmri, "subject", test_subjects=["c"])
    with pytest.raises(ValueError, match="needs at least 2"):
        make_splits(make_fmri(runs=(6,)), "subject")


def test_keys_strategy_uses_the_files_split():
    keys = ["fmriTrn"] * 18 + ["fmriTest"] * 2
    fmri = make_fmri(runs=(18, 2), keys=keys)
    splits = make_splits(fmri, "keys", test_keys=["fmriTest"], val_fraction=0.1)
    assert_disjoint(splits, 20)
    np.testing.assert_array_equal(splits["test"], [18, 19])
    assert (len(splits["train"]), len(splits["val"])) == (16, 2)
    with pytest.raises(ValueError, match=r"Unknown key \['test'\]; existing: \['fmriTest', 'fmriTrn'\]"):
        make_splits(fmri, "keys", test_keys="test")
    with pytest.raises(ValueError, match=r"needs test_keys; the file's keys are \['fmriTest', 'fmriTrn'\]"):
        make_splits(fmri, "keys")


def test_unknown_strategy_and_tiny_random():
    with pytest.raises(ValueError, match=r"Unknown split strategy 'time'; expected one of \['contiguous'"):
        make_splits(make_fmri(), "time")
    with pytest.raises(ValueError, match="Too few samples: 2 given, the split needs at least 3"):
        make_splits(make_fmri(runs=(2,)), "random")
    with pytest.raises(ValueError, match=r"test_fraction must be in \[0, 1\), got 1.5"):
        make_splits(make_fmri(), "random", test_fraction=1.5)


def test_contiguous_on_nitime_runs():
    pytest.importorskip("nitime")
    fmri = load_example("nitime")  # 2 runs x 40 volumes
    splits = make_splits(fmri, gap=2)
    assert_disjoint(splits, 80)
    for run in (0, 1):
        blocks = [np.intersect1d(splits[k], np.flatnonzero(fmri.runs == run)) for k in ("train", "val", "test")]
        assert [len(b) for b in blocks] == [24, 4, 8]
        assert blocks[0].max() + 2 < blocks[1].min() and blocks[1].max() + 2 < blocks[2].min()  # gaps
