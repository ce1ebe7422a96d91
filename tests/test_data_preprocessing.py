"""Voxel statistics against numpy / scikit-learn, and the batch-reading torch dataset."""

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from fmri_diffusers.data import VectorDataset, compute_voxel_stats, load_fmri

RNG = np.random.default_rng(0)


def test_stats_match_sklearn_on_train_rows():
    # Large offset, small spread: where naive sum-of-squares in float32 fails.
    x = (1000 + RNG.standard_normal((103, 9))).astype(np.float32)
    train = RNG.choice(103, size=70, replace=False)
    stats = compute_voxel_stats(x, train, chunk_size=16)
    ref = StandardScaler().fit(x[train].astype(np.float64))
    np.testing.assert_allclose(stats.mean, ref.mean_, rtol=1e-6)
    np.testing.assert_allclose(stats.std, ref.scale_, rtol=1e-5)
    assert stats.mean.dtype == stats.std.dtype == np.float32 and stats.mask.all()


def test_constant_voxels_are_masked_safely(caplog):
    x = RNG.standard_normal((20, 4)).astype(np.float32)
    x[:, 1] = 5.0
    with caplog.at_level("INFO"):
        stats = compute_voxel_stats(x, chunk_size=3)
    np.testing.assert_array_equal(stats.mask, [True, False, True, True])
    assert stats.std[1] == 1.0 and stats.mean[1] == 5.0
    assert "3 of 4 voxels kept (1 constant" in caplog.text


def test_nonfinite_raise_or_mask():
    x = RNG.standard_normal((10, 4)).astype(np.float32)
    x[[2, 7], 3] = np.nan
    x[9, 0] = np.inf
    where = r"first at \(sample 2, voxel 3\), \(sample 7, voxel 3\), \(sample 9, voxel 0\)"
    with pytest.raises(ValueError, match="3 NaN/Inf values, " + where):
        compute_voxel_stats(x, chunk_size=4)
    stats = compute_voxel_stats(x, nonfinite="mask", chunk_size=4)
    np.testing.assert_array_equal(stats.mask, [False, True, True, False])
    np.testing.assert_allclose(stats.mean[3], np.nanmean(x[:, 3]), rtol=1e-6)
    assert stats.std[3] == stats.std[0] == 1.0
    # only the training rows count
    assert compute_voxel_stats(x, np.arange(2)).mask.all()


def test_all_constant_and_bad_arguments():
    with pytest.raises(ValueError, match="All 3 voxels are constant or non-finite over the 5 training samples"):
        compute_voxel_stats(np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match=r"Expected shape \(n_samples, n_voxels\), got \(3092,\)"):
        compute_voxel_stats(np.ones(3092))
    with pytest.raises(ValueError, match="at least one sample index"):
        compute_voxel_stats(np.ones((5, 3)), [])
    with pytest.raises(ValueError, match="nonfinite must be 'raise' or 'mask', got 'drop'"):
        compute_voxel_stats(np.ones((5, 3)), nonfinite="drop")


def test_stats_stream_from_memmap_and_arrow(tmp_path):
    import datasets

    x = RNG.standard_normal((1500, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    feats = datasets.Features({"x": datasets.List(datasets.Value("float32"), length=5)})
    datasets.Dataset.from_dict({"x": x}, features=feats).save_to_disk(tmp_path / "ds")
    train = np.arange(0, 1500, 3)
    ref = compute_voxel_stats(x, train)
    for source in (tmp_path / "x.npy", tmp_path / "ds"):
        stats = compute_voxel_stats(load_fmri(source).data, train, chunk_size=128)
        np.testing.assert_allclose(stats.mean, ref.mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(stats.std, ref.std, rtol=1e-6)


def test_vector_dataset_with_dataloader():
    x = RNG.standard_normal((30, 4)).astype(np.float32)
    train = np.arange(5, 30, 2)
    ds = VectorDataset(x, train)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, collate_fn=VectorDataset.collate)
    seen = []
    for batch in loader:
        assert isinstance(batch, torch.Tensor) and batch.dtype == torch.float32 and batch.shape[1] == 4
        seen.append(batch.numpy())
    seen = np.concatenate(seen)
    assert len(seen) == len(train)
    # every training row exactly once, in shuffled (not sorted) order
    order = [int(np.flatnonzero((x == row).all(axis=1))[0]) for row in seen]
    assert sorted(order) == list(train) and order != list(train)
    np.testing.assert_array_equal(ds[2].numpy(), x[train[2]])


def test_vector_dataset_returns_labels():
    x = RNG.standard_normal((6, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    ds = VectorDataset(x, [5, 0, 3], labels=labels)
    batch = ds.__getitems__([2, 0, 1])
    np.testing.assert_array_equal(batch["x"].numpy(), x[[3, 5, 0]])
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 2, 0]
    assert ds[1]["labels"].item() == 0 and ds[1]["x"].shape == (3,)
    with pytest.raises(ValueError, match=r"Expected labels of shape \(6,\), got \(5,\)"):
        VectorDataset(x, labels=labels[:5])
