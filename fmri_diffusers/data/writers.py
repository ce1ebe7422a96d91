"""Write ``(n_samples, n_voxels)`` samples to .npz, NIfTI or surface files, atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from .nifti import VolumeSpace
from .surface import SurfaceSpace

SAMPLES_KEY = "samples"
METADATA_JSON_KEY = "metadata_json"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for ext in (".nii.gz", ".func.gii", ".npz", ".nii", ".mgz", ".mgh", ".gii"):
        if name.endswith(ext):
            return path.name[-len(ext):]
    raise ValueError(f"Unknown output type: {path}. Expected .npz, .nii, .nii.gz, .mgz, .mgh or .gii")


def _atomic_write(path: Path, write, sources) -> None:
    """``write(tmp_path)`` then ``os.replace(tmp_path, path)``: never a half-written ``path``.

    The temporary file sits in the same folder (same file system, so the rename is atomic) and
    has the same extension, because nibabel picks the format from it.
    """
    if os.path.abspath(path) in sources:
        raise ValueError(f"Refusing to overwrite the input file {path}; choose another output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_suffix(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _npz_writer(samples: np.ndarray, metadata: dict):
    arrays, scalars = {SAMPLES_KEY: samples}, {}
    for key, value in metadata.items():
        if key in (SAMPLES_KEY, METADATA_JSON_KEY):
            raise ValueError(f"metadata key {key!r} is reserved; rename it")
        if value is None or isinstance(value, (str, bool, int, float, np.generic)):
            scalars[key] = value.item() if isinstance(value, np.generic) else value
        else:
            arrays[key] = np.asarray(value)
    arrays[METADATA_JSON_KEY] = np.array(json.dumps(scalars))

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)

    return write


def save_samples(path, samples, *, space=None, metadata=None) -> list[Path]:
    """Save ``samples`` ``(n_samples, n_voxels)`` to ``path``; returns the files written.

    Parameters
    ----------
    path : str or Path
        The extension picks the format:

        - ``.npz``: arrays ``samples`` and each array-valued metadata entry, plus
          ``metadata_json``, a JSON string of the scalar entries (str, int, float, bool, None).
        - ``.nii`` / ``.nii.gz``: a 4-D float32 image (one volume per sample) with the input's
          affine and header; needs a :class:`VolumeSpace`.
        - ``.mgz`` / ``.mgh`` / ``.func.gii``: surface time series; needs a :class:`SurfaceSpace`.
          An input of several files (e.g. hemispheres) is written as one file per block named
          ``<stem>.<name><ext>``: ``out.mgz`` -> ``out.lh.mgz``, ``out.rh.mgz``.
    samples : array-like (n_samples, n_voxels)
        numpy array or CPU tensor; stored as float32.
    space : VolumeSpace, SurfaceSpace or None
        ``FMRIData.space`` of the input data.
    metadata : dict, optional
        ``.npz`` only.

    Notes
    -----
    Each file is written under a temporary name in the same folder and renamed into place, so an
    interrupted write never leaves a half file under the final name. A path equal to one of the
    space's input files is refused.
    """
    path = Path(path)
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 2:
        raise ValueError(f"Expected samples of shape (n_samples, n_voxels), got {samples.shape}")
    if space is not None and samples.shape[1] != space.n_voxels:
        raise ValueError(f"Expected shape (n_samples, {space.n_voxels}) for this space, got {samples.shape}")
    suffix = _suffix(path)
    sources = set(space.sources) if space is not None else set()
    if suffix == ".npz":
        _atomic_write(path, _npz_writer(samples, metadata or {}), sources)
        return [path]
    if metadata:
        raise ValueError(f"metadata is stored in .npz files only, not {suffix}")
    if suffix.lower() in (".nii", ".nii.gz"):
        if not isinstance(space, VolumeSpace):
            raise ValueError(f"Writing {path} needs the VolumeSpace of NIfTI input data (fmri.space), got {space!r}")
        img = space.to_image(samples)
        _atomic_write(path, lambda tmp: nib.save(img, tmp), sources)
        return [path]
    if not isinstance(space, SurfaceSpace):
        raise ValueError(f"Writing {path} needs the SurfaceSpace of surface input data (fmri.space), got {space!r}")
    images = space.to_images(samples, "mgh" if suffix.lower() in (".mgz", ".mgh") else "gifti")
    written = []
    for name, img in images:
        out = path if len(images) == 1 else path.with_name(f"{path.name[:-len(suffix)]}.{name}{suffix}")
        _atomic_write(out, lambda tmp, img=img: nib.save(img, tmp), sources)
        written.append(out)
    return written
