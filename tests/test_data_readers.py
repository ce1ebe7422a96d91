"""Readers: each format against a reference read (scipy / nibabel / pyarrow) and bad inputs."""

import hashlib
import importlib.resources
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.io

from fmri_diffusers.data import ArrowVectors, FMRIMasker, Float32View, load_example, load_fmri

RNG = np.random.default_rng(0)


def _md5(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_bold(path, shape=(4, 5, 3), n_t=12, seed=0):
    """A 4-D int16 'EPI': bright brain voxels, dark background in one corner, one constant voxel."""
    rng = np.random.default_rng(seed)
    data = (500 + 50 * rng.standard_normal(shape + (n_t,))).astype(np.int16)
    data[0, 0, :] = rng.integers(0, 3, size=(shape[2], n_t))  # background, non-constant but dark
    data[1, 1, 1] = 700  # constant voxel
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-4, -5, 3]
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms((2.0, 2.0, 2.5, 1.5))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return data


# -- matrices ----------------------------------------------------------------------------------
def test_mat_digit69_matches_scipy(digit69_path):
    before = _md5(digit69_path)
    fmri = load_fmri(digit69_path, data_key=["fmriTrn", "fmriTest"], label_key=["labelTrn", "labelTest"])
    ref = scipy.io.loadmat(digit69_path)
    np.testing.assert_array_equal(fmri.data, np.concatenate([ref["fmriTrn"], ref["fmriTest"]]).astype(np.float32))
    assert fmri.data.dtype == np.float32 and fmri.data.shape == (100, 3092)
    assert fmri.labels.dtype == np.int64 and set(fmri.labels) == {1, 2}
    np.testing.assert_array_equal(fmri.labels[90:], ref["labelTest"].ravel())
    assert list(fmri.keys[[0, 89, 90]]) == ["fmriTrn", "fmriTrn", "fmriTest"]
    assert list(np.unique(fmri.runs)) == [0, 1]
    assert fmri.space is None
    assert _md5(digit69_path) == before  # readers never modify their input


def test_mat_missing_key_lists_existing(digit69_path):
    with pytest.raises(ValueError, match=r"Key 'fmri' not found .*'fmriTest', 'fmriTrn', 'labelTest'"):
        load_fmri(digit69_path, data_key="fmri")
    with pytest.raises(ValueError, match="Pass data_key"):
        load_fmri(digit69_path)


def test_mat_v73_without_h5py_says_so(tmp_path):
    # A MATLAB v7.3 file starts with a 128-byte header whose version field is 0x0200 (HDF5 inside).
    path = tmp_path / "v73.mat"
    header = b"MATLAB 7.3 MAT-file".ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM"
    path.write_bytes(header + b"\0" * 512)
    if importlib.util.find_spec("h5py") is not None:
        pytest.skip("h5py is installed")
    with pytest.raises(ImportError, match="v7.3 .*needs h5py"):
        load_fmri(path, data_key="x")


def test_npz_one_key_per_subject(tmp_path):
    a, b = RNG.standard_normal((6, 4)), RNG.standard_normal((3, 4))
    np.savez(tmp_path / "subs.npz", sub1=a, sub2=b)
    fmri = load_fmri(tmp_path / "subs.npz")
    np.testing.assert_array_equal(fmri.data, np.concatenate([a, b]).astype(np.float32))
    assert list(fmri.subjects) == ["sub1"] * 6 + ["sub2"] * 3
    assert list(fmri.keys) == list(fmri.subjects) and not fmri.runs.any() and fmri.labels is None


def test_npz_named_keys_with_labels(tmp_path):
    x, y = RNG.standard_normal((5, 3)).astype(np.float32), np.array([[0], [1], [1], [0], [2]])
    np.savez(tmp_path / "d.npz", data=x, labels=y)
    fmri = load_fmri(tmp_path / "d.npz", data_key="data", label_key="labels")
    np.testing.assert_array_equal(fmri.data, x)
    np.testing.assert_array_equal(fmri.labels, y.ravel())


def test_npz_different_voxel_counts_names_both(tmp_path):
    np.savez(tmp_path / "subs.npz", sub1=np.zeros((2, 4)), sub2=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="key 'sub1' has 4 voxels, key 'sub2' has 5"):
        load_fmri(tmp_path / "subs.npz")


def test_npz_1d_array_is_refused(tmp_path):
    np.savez(tmp_path / "v.npz", sub1=np.zeros(3092))
    with pytest.raises(ValueError, match=r"Expected shape \(n_samples, n_voxels\), got \(3092,\)"):
        load_fmri(tmp_path / "v.npz")


def test_nonfinite_raise_or_keep(tmp_path):
    x = np.ones((4, 3), np.float32)
    x[1, 2], x[3, 0] = np.nan, np.inf
    np.savez(tmp_path / "nan.npz", sub1=x)
    with pytest.raises(ValueError, match=r"2 NaN/Inf values, first at \(sample 1, voxel 2\), \(sample 3, voxel 0\)"):
        load_fmri(tmp_path / "nan.npz")
    assert np.isnan(load_fmri(tmp_path / "nan.npz", nonfinite="mask").data[1, 2])


def test_npy_is_memory_mapped(tmp_path):
    x = RNG.standard_normal((10, 7)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    fmri = load_fmri(tmp_path / "x.npy")
    assert isinstance(fmri.data, np.memmap)
    np.testing.assert_array_equal(fmri.data[[7, 2]], x[[7, 2]])


def test_npy_float64_is_converted_per_batch(tmp_path):
    x = RNG.standard_normal((10, 7))
    np.save(tmp_path / "x64.npy", x)
    fmri = load_fmri(tmp_path / "x64.npy")
    assert isinstance(fmri.data, Float32View) and fmri.data.dtype == np.float32
    batch = fmri.data[np.array([3, 1])]
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, x[[3, 1]].astype(np.float32))


def test_npy_bad_shape_and_dtype(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros(3092, np.float32))
    with pytest.raises(ValueError, match=r"Expected shape \(n_samples, n_voxels\), got \(3092,\)"):
        load_fmri(tmp_path / "v.npy")
    np.save(tmp_path / "i.npy", np.zeros((3, 4), np.int32))
    with pytest.raises(TypeError, match="float32 or float64 .*int32"):
        load_fmri(tmp_path / "i.npy")


def test_missing_unknown_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_fmri(tmp_path / "nope.npz")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"Unknown file type: .*x\.csv"):
        load_fmri(tmp_path / "x.csv")
    np.savez(tmp_path / "t.npz", sub1=np.zeros((50, 50)))
    (tmp_path / "t.npz").write_bytes((tmp_path / "t.npz").read_bytes()[:300])  # truncated
    with pytest.raises(ValueError, match=r"Cannot read \.npz file .*t\.npz"):
        load_fmri(tmp_path / "t.npz")
    (tmp_path / "bad.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match=r"Cannot read \.mat file .*bad\.mat"):
        load_fmri(tmp_path / "bad.mat", data_key="x")


# -- NIfTI -------------------------------------------------------------------------------------
def test_nifti_runs_and_derived_mask(tmp_path):
    d1 = write_bold(tmp_path / "run1.nii.gz", seed=1)
    d2 = write_bold(tmp_path / "run2.nii.gz", seed=2)
    fmri = load_fmri([tmp_path / "run1.nii.gz", tmp_path / "run2.nii.gz"])
    mask = fmri.space.mask_img.get_fdata().astype(bool)
    expected = np.ones(d1.shape[:3], bool)
    expected[0, 0, :] = False  # dark background
    expected[1, 1, 1] = False  # constant
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(fmri.data, np.concatenate([d1[expected].T, d2[expected].T]).astype(np.float32))
    assert list(np.bincount(fmri.runs)) == [12, 12]
    np.testing.assert_allclose(fmri.space.mask_img.affine, nib.load(tmp_path / "run1.nii.gz").affine)


def test_nifti_derived_mask_drops_nan_voxels(tmp_path, caplog):
    data = RNG.standard_normal((3, 3, 2, 8)).astype(np.float32)  # zero-mean: intensity rule skipped
    data[2, 2, 1, 4] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    with caplog.at_level("INFO"):
        fmri = load_fmri(tmp_path / "nan.nii")
    assert fmri.n_voxels == 17 and np.isfinite(fmri.data).all()
    assert "1 voxels hold NaN/Inf" in caplog.text and "rule skipped" in caplog.text


def test_nifti_explicit_mask(tmp_path):
    data = write_bold(tmp_path / "bold.nii")
    mask = np.zeros(data.shape[:3], np.uint8)
    mask[2:, 1:4, 1] = 1
    nib.save(nib.Nifti1Image(mask, nib.load(tmp_path / "bold.nii").affine), tmp_path / "mask.nii.gz")
    fmri = load_fmri(tmp_path / "bold.nii", mask=tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(fmri.data, data[mask.astype(bool)].T.astype(np.float32))


def test_nifti_bad_inputs(tmp_path):
    data = write_bold(tmp_path / "bold.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((4, 5, 4), np.uint8), np.eye(4)), tmp_path / "mask.nii")
    with pytest.raises(ValueError, match=r"Mask shape \(4, 5, 4\) does not match image shape \(4, 5, 3\)"):
        load_fmri(tmp_path / "bold.nii.gz", mask=tmp_path / "mask.nii")
    nib.save(nib.Nifti1Image(data[..., 0], np.eye(4)), tmp_path / "vol3d.nii")
    with pytest.raises(ValueError, match=r"Expected a 4-D image \(x, y, z, time\), got shape \(4, 5, 3\)"):
        load_fmri(tmp_path / "vol3d.nii")
    raw = (tmp_path / "bold.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"Cannot read .*cut\.nii\.gz"):
        load_fmri(tmp_path / "cut.nii.gz")
    nib.save(nib.Nifti1Image(np.full((2, 2, 2, 5), 3.0, np.float32), np.eye(4)), tmp_path / "flat.nii")
    with pytest.raises(ValueError, match="keeps no voxel"):
        load_fmri(tmp_path / "flat.nii")


def test_masker_inverse_transform_keeps_affine_and_header(tmp_path):
    write_bold(tmp_path / "bold.nii.gz")
    masker = FMRIMasker().fit(tmp_path / "bold.nii.gz")
    X = masker.transform(tmp_path / "bold.nii.gz")
    img = masker.inverse_transform(X)
    src = nib.load(tmp_path / "bold.nii.gz")
    assert img.shape == src.shape and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, src.affine)
    assert img.header.get_zooms() == src.header.get_zooms()
    np.testing.assert_array_equal(masker.transform(img), X)
    with pytest.raises(ValueError, match=rf"Expected shape \(n_samples, {X.shape[1]}\)"):
        masker.inverse_transform(X[:, :-1])


def test_nitime_example():
    pytest.importorskip("nitime")
    fmri = load_example("nitime")
    assert fmri.data.shape == (80, 1800) and fmri.data.dtype == np.float32
    assert list(np.bincount(fmri.runs)) == [40, 40] and set(fmri.subjects) == {"sub-01"}
    assert fmri.source == "example:nitime"
    assert load_fmri("example:nitime").data.shape == (80, 1800)
    run2 = nib.load(importlib.resources.files("nitime") / "data" / "fmri2.nii.gz").get_fdata()
    np.testing.assert_array_equal(fmri.data[40:], run2.reshape(-1, 40).T)  # all voxels kept, C order
    with pytest.raises(ValueError, match=r"Unknown example 'haxby'; available: \['nitime'\]"):
        load_example("haxby")


# -- surfaces ----------------------------------------------------------------------------------
def test_mgz_hemispheres_concatenated_in_order(tmp_path):
    lh, rh = RNG.standard_normal((6, 5)).astype(np.float32), RNG.standard_normal((4, 5)).astype(np.float32)
    nib.save(nib.MGHImage(lh[:, None, None, :], np.eye(4)), tmp_path / "lh.bold.mgz")
    nib.save(nib.MGHImage(rh[:, None, None, :], np.eye(4)), tmp_path / "rh.bold.mgz")
    fmri = load_fmri([tmp_path / "lh.bold.mgz", tmp_path / "rh.bold.mgz"])
    np.testing.assert_array_equal(fmri.data, np.concatenate([lh, rh]).T)
    assert fmri.space.names == ["lh", "rh"] and fmri.space.n_vertices == [6, 4]
    with pytest.raises(ValueError, match=r"surface_order names 1 blocks"):
        load_fmri([tmp_path / "lh.bold.mgz", tmp_path / "rh.bold.mgz"], surface_order=["left"])


def test_gifti_one_darray_per_timepoint_and_2d(tmp_path):
    x = RNG.standard_normal((7, 4)).astype(np.float32)  # (n_vertices, t)
    per_t = [nib.gifti.GiftiDataArray(x[:, t], datatype="NIFTI_TYPE_FLOAT32") for t in range(4)]
    nib.save(nib.gifti.GiftiImage(darrays=per_t), tmp_path / "a.func.gii")
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(x, datatype="NIFTI_TYPE_FLOAT32")]),
             tmp_path / "b.func.gii")
    for name in ("a.func.gii", "b.func.gii"):
        fmri = load_fmri(tmp_path / name, surface_order=["cortex"])
        np.testing.assert_array_equal(fmri.data, x.T)
        assert fmri.space.names == ["cortex"]


def test_surface_bad_shape(tmp_path):
    nib.save(nib.MGHImage(np.zeros((6, 2, 1, 3), np.float32), np.eye(4)), tmp_path / "vol.mgz")
    with pytest.raises(ValueError, match=r"shaped \(n_vertices, 1, 1, n_timepoints\), got \(6, 2, 1, 3\)"):
        load_fmri(tmp_path / "vol.mgz")


# -- datasets / Arrow --------------------------------------------------------------------------
def _save_dataset(folder, x, labels=None, length=True):
    import datasets

    feats = {"x": datasets.List(datasets.Value("float32"), length=x.shape[1] if length else -1)}
    columns = {"x": x}
    if labels is not None:
        feats["label"], columns["label"] = datasets.Value("int64"), labels
    ds = datasets.Dataset.from_dict(columns, features=datasets.Features(feats))
    ds.save_to_disk(folder)
    return ds


def test_arrow_dataset_folder_reads_batches(tmp_path):
    x = RNG.standard_normal((2500, 6)).astype(np.float32)  # datasets writes 1000-row chunks
    labels = RNG.integers(0, 3, 2500)
    _save_dataset(tmp_path / "ds", x, labels)
    fmri = load_fmri(tmp_path / "ds", label_key="label")
    assert isinstance(fmri.data, ArrowVectors) and fmri.data.shape == (2500, 6)
    idx = np.array([2499, 0, 1000, 999, 1500, 0, -1])
    np.testing.assert_array_equal(fmri.data[idx], x[idx])
    np.testing.assert_array_equal(fmri.data[995:1005], x[995:1005])
    np.testing.assert_array_equal(fmri.data[7], x[7])
    np.testing.assert_array_equal(np.asarray(fmri.data), x)
    np.testing.assert_array_equal(fmri.labels, labels)
    arrow_file = next((tmp_path / "ds").glob("*.arrow"))
    np.testing.assert_array_equal(load_fmri([arrow_file, arrow_file]).data[[2500]], x[[0]])


def test_arrow_variable_length_list_column(tmp_path):
    x = RNG.standard_normal((5, 3)).astype(np.float32)
    _save_dataset(tmp_path / "ds", x, length=False)
    np.testing.assert_array_equal(load_fmri(tmp_path / "ds").data[[4, 1]], x[[4, 1]])


def test_arrow_bad_inputs(tmp_path):
    _save_dataset(tmp_path / "ds", np.zeros((3, 2), np.float32) + np.arange(3)[:, None], labels=np.arange(3))
    with pytest.raises(ValueError, match=r"Column 'lbl' not found .*columns: \['x', 'label'\]"):
        load_fmri(tmp_path / "ds", label_key="lbl")
    (tmp_path / "junk.arrow").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"Cannot read Arrow file .*junk\.arrow"):
        load_fmri(tmp_path / "junk.arrow")
    with pytest.raises(IndexError, match="out of range for 3 samples"):
        load_fmri(tmp_path / "ds").data[[3]]
