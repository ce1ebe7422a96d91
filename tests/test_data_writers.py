"""Writers: read -> write -> read round trips, space save/load, atomic writes, refusals."""

import json

import nibabel as nib
import numpy as np
import pytest

from fmri_diffusers.data import SurfaceSpace, VolumeSpace, load_fmri, load_space, save_samples

RNG = np.random.default_rng(0)


@pytest.fixture
def bold_path(tmp_path):
    """A 4-D int16 EPI with a dark background column, TR 1.5 s, an oblique-free affine."""
    data = (500 + 50 * RNG.standard_normal((4, 5, 3, 10))).astype(np.int16)
    data[0, 0, :] = 1
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-4, -5, 3]
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms((2.0, 2.0, 2.5, 1.5))
    img.header.set_xyzt_units("mm", "sec")
    path = tmp_path / "in" / "bold.nii.gz"
    path.parent.mkdir(exist_ok=True)
    nib.save(img, path)
    return path


@pytest.fixture
def hemi_paths(tmp_path):
    lh, rh = RNG.standard_normal((6, 5)), RNG.standard_normal((4, 5))
    paths = [tmp_path / "in" / "lh.bold.mgz", tmp_path / "in" / "rh.bold.mgz"]
    paths[0].parent.mkdir(exist_ok=True)
    for path, x in zip(paths, (lh, rh)):
        nib.save(nib.MGHImage(x[:, None, None, :].astype(np.float32), np.eye(4)), path)
    return paths


def test_npz_round_trip_with_metadata(tmp_path):
    samples = RNG.standard_normal((3, 8)).astype(np.float32)
    meta = {"seed": 7, "scheduler": "ddim", "guidance": 1.5, "labels": np.array([0, 1, 1]), "note": None}
    save_samples(tmp_path / "s.npz", samples, metadata=meta)
    with np.load(tmp_path / "s.npz") as f:
        np.testing.assert_array_equal(f["samples"], samples)
        np.testing.assert_array_equal(f["labels"], [0, 1, 1])
        assert json.loads(str(f["metadata_json"])) == {"seed": 7, "scheduler": "ddim", "guidance": 1.5, "note": None}
    np.testing.assert_array_equal(load_fmri(tmp_path / "s.npz", data_key="samples").data, samples)


def test_nifti_round_trip_keeps_array_affine_header_and_mask(tmp_path, bold_path):
    fmri = load_fmri(bold_path)
    out = tmp_path / "out" / "samples.nii.gz"
    assert save_samples(out, fmri.data, space=fmri.space) == [out]
    again = load_fmri(out, mask=fmri.space.mask_img)
    np.testing.assert_array_equal(again.data, fmri.data)
    src, written = nib.load(bold_path), nib.load(out)
    np.testing.assert_allclose(written.affine, src.affine)
    assert written.header.get_zooms() == src.header.get_zooms()  # TR kept
    assert written.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_array_equal(again.space.mask_img.get_fdata(), fmri.space.mask_img.get_fdata())
    assert written.get_fdata()[0, 0, 0].max() == 0  # outside the mask


def test_volume_space_save_load_writes_the_same_image(tmp_path, bold_path):
    fmri = load_fmri(bold_path)
    fmri.space.save(tmp_path / "space")
    space = load_space(tmp_path / "space")
    assert isinstance(space, VolumeSpace) and space.n_voxels == fmri.n_voxels
    save_samples(tmp_path / "a.nii", fmri.data[:3], space=fmri.space)
    save_samples(tmp_path / "b.nii", fmri.data[:3], space=space)
    a, b = nib.load(tmp_path / "a.nii"), nib.load(tmp_path / "b.nii")
    np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())
    np.testing.assert_allclose(a.affine, b.affine)
    assert a.header.get_zooms() == b.header.get_zooms()


def test_surface_round_trip_per_hemisphere(tmp_path, hemi_paths):
    fmri = load_fmri(hemi_paths)
    written = save_samples(tmp_path / "out" / "samples.mgz", fmri.data, space=fmri.space)
    assert [p.name for p in written] == ["samples.lh.mgz", "samples.rh.mgz"]
    np.testing.assert_array_equal(load_fmri(written).data, fmri.data)
    gifti = save_samples(tmp_path / "out" / "samples.func.gii", fmri.data, space=fmri.space)
    assert [p.name for p in gifti] == ["samples.lh.func.gii", "samples.rh.func.gii"]
    np.testing.assert_array_equal(load_fmri(gifti).data, fmri.data)
    fmri.space.save(tmp_path / "space")
    space = load_space(tmp_path / "space")
    assert isinstance(space, SurfaceSpace) and (space.names, space.n_vertices) == (["lh", "rh"], [6, 4])


def test_writer_refuses_to_overwrite_its_input(hemi_paths, bold_path):
    fmri = load_fmri(bold_path)
    before = bold_path.read_bytes()
    with pytest.raises(ValueError, match="Refusing to overwrite the input file .*bold.nii.gz"):
        save_samples(bold_path, fmri.data, space=fmri.space)
    assert bold_path.read_bytes() == before
    surf = load_fmri(hemi_paths[0])
    with pytest.raises(ValueError, match="Refusing to overwrite the input file .*lh.bold.mgz"):
        save_samples(hemi_paths[0], surf.data, space=surf.space)


def test_interrupted_write_leaves_no_file(tmp_path, bold_path, monkeypatch):
    fmri = load_fmri(bold_path)

    def broken_save(img, filename):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_samples(tmp_path / "out.nii.gz", fmri.data, space=fmri.space)
    assert list(tmp_path.glob("*out.nii.gz*")) == []  # neither the final nor the temporary file


def test_writer_bad_inputs(tmp_path, bold_path):
    fmri = load_fmri(bold_path)
    with pytest.raises(ValueError, match=r"Expected samples of shape \(n_samples, n_voxels\), got \(5,\)"):
        save_samples(tmp_path / "x.npz", np.zeros(5))
    expected = rf"Expected shape \(n_samples, {fmri.n_voxels}\) for this space, got \(2, 3\)"
    with pytest.raises(ValueError, match=expected):
        save_samples(tmp_path / "x.nii", np.zeros((2, 3)), space=fmri.space)
    with pytest.raises(ValueError, match="needs the VolumeSpace"):
        save_samples(tmp_path / "x.nii", fmri.data)
    with pytest.raises(ValueError, match="needs the SurfaceSpace"):
        save_samples(tmp_path / "x.mgz", fmri.data, space=fmri.space)
    with pytest.raises(ValueError, match=r"Unknown output type: .*x\.png"):
        save_samples(tmp_path / "x.png", fmri.data)
    with pytest.raises(ValueError, match="metadata key 'samples' is reserved"):
        save_samples(tmp_path / "x.npz", fmri.data, metadata={"samples": 1})
