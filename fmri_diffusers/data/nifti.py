"""4-D NIfTI volumes <-> ``(n_samples, n_voxels)`` matrices.

:class:`FMRIMasker` has the shape of nilearn's ``NiftiMasker``: ``fit`` learns a 3-D mask,
``transform`` gives ``(n_samples, n_voxels)`` float32 and ``inverse_transform`` gives a 4-D image
back with the input's affine and header. It is written with nibabel + numpy only.
:class:`VolumeSpace` is the serialisable record of that mapping which the writers use.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

# nibabel raises these for missing, corrupt or truncated files (gzip errors surface as EOFError,
# zlib.error or OSError, and only when the data are read, not at nib.load).
_NIBABEL_ERRORS = (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error)


def load_image(img, what: str = "image"):
    """Return a nibabel image from a path or an image; a bad file raises ValueError naming it."""
    if isinstance(img, (str, os.PathLike)):
        if not os.path.exists(img):
            raise FileNotFoundError(f"{what} file not found: {img}")
        try:
            return nib.load(os.fspath(img))
        except _NIBABEL_ERRORS as err:
            raise ValueError(f"Cannot read {what} file {img}: {err}") from err
    if isinstance(img, nib.spatialimages.SpatialImage):
        return img
    raise TypeError(f"Expected a path or a nibabel image for the {what}, got {type(img).__name__}")


def image_data(img, dtype=np.float32) -> np.ndarray:
    """Read an image's data as ``dtype``; a corrupt or truncated file raises ValueError naming it."""
    try:
        return img.get_fdata(dtype=dtype)
    except _NIBABEL_ERRORS as err:
        raise ValueError(f"Cannot read the data of {img.get_filename() or 'image'}: {err}") from err


def _name(img) -> str:
    return img.get_filename() or "<in-memory image>"


class FMRIMasker:
    """Mask 4-D fMRI images into ``(n_samples, n_voxels)`` float32 matrices and back.

    Parameters
    ----------
    mask_img : str, Path, nibabel image or None
        A 3-D mask (non-zero = kept) with the images' spatial shape and affine. ``None`` derives
        one in :meth:`fit` (see there).
    lower_cutoff : float
        For a derived mask: keep voxels whose mean is above ``lower_cutoff`` times the robust
        maximum (98th percentile) of the voxel means, as nilearn's ``compute_epi_mask`` does with
        its histogram; background voxels of a raw EPI are dark.

    Attributes
    ----------
    mask_img_ : nibabel.Nifti1Image
        The fitted 3-D uint8 mask, with the images' affine and header.
    header_ : nibabel.Nifti1Header
        Header of the first fitted image; :meth:`inverse_transform` writes with it.
    n_voxels_ : int

    Examples
    --------
    >>> masker = FMRIMasker().fit(["run1.nii.gz", "run2.nii.gz"])  # doctest: +SKIP
    >>> X = masker.transform("run1.nii.gz")  # (n_samples, n_voxels)  # doctest: +SKIP
    >>> img = masker.inverse_transform(X)  # 4-D image, same affine and header  # doctest: +SKIP
    """

    def __init__(self, mask_img=None, lower_cutoff: float = 0.2):
        self.mask_img = mask_img
        self.lower_cutoff = lower_cutoff

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, imgs=None):
        """Learn the mask from ``imgs`` (a 4-D image or path, or a list of them = runs).

        Without ``mask_img``, a voxel is kept when it is finite at every time point, not constant
        across all runs, and (for non-negative data such as raw EPI intensities) its mean exceeds
        ``lower_cutoff`` x the 98th percentile of the means of the finite, non-constant voxels.
        Data with negative means (already processed) skip the intensity rule. The counts are
        logged at INFO level.
        """
        images = [self._check_4d(img) for img in _as_list(imgs)] if imgs is not None else []
        if self.mask_img is None and not images:
            raise ValueError("FMRIMasker.fit needs images when no mask_img is given")
        if images:
            self._check_same_grid(images)
        if self.mask_img is not None:
            mask_img = load_image(self.mask_img, "mask")
            mask = np.asarray(mask_img.dataobj)
            if mask.ndim != 3:
                raise ValueError(f"Expected a 3-D mask, got shape {mask.shape} ({_name(mask_img)})")
            mask = mask != 0
            if images:
                self._check_mask_matches(mask, mask_img.affine, images[0])
            affine, header = mask_img.affine, (images[0] if images else mask_img).header
        else:
            mask = self._derive_mask(images)
            affine, header = images[0].affine, images[0].header
        if not mask.any():
            raise ValueError("The mask keeps no voxel")
        self.header_ = header.copy()
        self.mask_img_ = nib.Nifti1Image(mask.astype(np.uint8), affine, header=self.header_.copy())
        self.mask_img_.set_data_dtype(np.uint8)
        self.n_voxels_ = int(mask.sum())
        self._mask = mask
        return self

    def _check_4d(self, img):
        img = load_image(img)
        if len(img.shape) != 4:
            raise ValueError(
                f"Expected a 4-D image (x, y, z, time), got shape {img.shape} ({_name(img)})"
            )
        return img

    @staticmethod
    def _check_same_grid(images) -> None:
        ref = images[0]
        for img in images[1:]:
            if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine):
                raise ValueError(
                    f"Runs must share one voxel grid: {_name(img)} has shape {img.shape[:3]}, "
                    f"{_name(ref)} has shape {ref.shape[:3]} (or their affines differ)"
                )

    @staticmethod
    def _check_mask_matches(mask, mask_affine, img) -> None:
        if mask.shape != img.shape[:3]:
            raise ValueError(
                f"Mask shape {mask.shape} does not match image shape {img.shape[:3]} ({_name(img)})"
            )
        if not np.allclose(mask_affine, img.affine, atol=1e-4):
            raise ValueError(
                f"Mask affine\n{mask_affine}\ndoes not match the affine of {_name(img)}\n{img.affine}"
            )

    def _derive_mask(self, images) -> np.ndarray:
        # Pool all runs per voxel: (x, y, z) sums, extremes and finiteness.
        total, n = 0.0, 0
        vmin, vmax, finite = np.inf, -np.inf, True
        for img in images:
            data = image_data(img)  # (x, y, z, t) float32, cached by nibabel for transform
            finite = finite & np.isfinite(data).all(axis=-1)
            with np.errstate(invalid="ignore"):
                total = total + data.sum(axis=-1, dtype=np.float64)
                vmin = np.minimum(vmin, data.min(axis=-1))
                vmax = np.maximum(vmax, data.max(axis=-1))
            n += data.shape[-1]
        mean = np.where(finite, total / n, 0.0)
        varying = finite & (vmax > vmin)
        keep = varying.copy()
        intensity_rule = bool(varying.any()) and mean[varying].min() >= 0
        if intensity_rule:
            robust_max = np.percentile(mean[varying], 98)
            keep &= mean > self.lower_cutoff * robust_max
        logger.info(
            "Derived mask keeps %d of %d voxels (%d non-finite, %d constant, %d below %.2f x robust "
            "max intensity%s)", keep.sum(), keep.size, (~finite).sum(), (finite & ~varying).sum(),
            (varying & ~keep).sum(), self.lower_cutoff,
            "" if intensity_rule else ": rule skipped, data have negative means",
        )
        if (~finite).any():
            logger.warning("%d voxels hold NaN/Inf and are left out of the mask", (~finite).sum())
        return keep

    # -- transforms ----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "mask_img_"):
            raise ValueError("This FMRIMasker is not fitted yet: call fit() first")

    def transform(self, imgs) -> np.ndarray:
        """Return ``(n_samples, n_voxels)`` float32; a list of images is concatenated in time."""
        self._check_fitted()
        rows = []
        for img in _as_list(imgs):
            img = self._check_4d(img)
            self._check_mask_matches(self._mask, self.mask_img_.affine, img)
            rows.append(image_data(img)[self._mask].T)  # (n_voxels, t) -> (t, n_voxels)
        return np.ascontiguousarray(np.concatenate(rows, axis=0), dtype=np.float32)

    def fit_transform(self, imgs) -> np.ndarray:
        return self.fit(imgs).transform(imgs)

    def inverse_transform(self, X) -> nib.Nifti1Image:
        """``(n_samples, n_voxels)`` -> 4-D float32 image (``(n_voxels,)`` -> 3-D); 0 outside the mask.

        The affine and header (voxel sizes, TR, units, qform/sform codes) are those of the input.
        """
        self._check_fitted()
        X = np.asarray(X, dtype=np.float32)
        if X.ndim not in (1, 2) or X.shape[-1] != self.n_voxels_:
            raise ValueError(
                f"Expected shape (n_samples, {self.n_voxels_}) or ({self.n_voxels_},), got {X.shape}"
            )
        data = np.zeros(self._mask.shape + X.shape[:-1], dtype=np.float32)  # (x, y, z[, t])
        data[self._mask] = X.T
        header = self.header_.copy()
        zooms = header.get_zooms()
        img = nib.Nifti1Image(data, self.mask_img_.affine, header=header)
        img.set_data_dtype(np.float32)
        img.header.set_slope_inter(None, None)  # float32 output: no int16 scaling
        if X.ndim == 2:
            tr = zooms[3] if len(zooms) > 3 else 1.0
            img.header.set_zooms(tuple(zooms[:3]) + (tr,))
        return img


def _as_list(imgs) -> list:
    return list(imgs) if isinstance(imgs, (list, tuple)) else [imgs]


class VolumeSpace:
    """How to write ``(n_samples, n_voxels)`` vectors back as 4-D NIfTI images.

    Saved to a folder as ``mask.nii.gz`` (mask with the input affine and header) plus
    ``space.json`` (voxel sizes including the TR, and the input paths, which writers refuse to
    overwrite).
    """

    kind = "volume"

    def __init__(self, masker: FMRIMasker, sources=()):
        masker._check_fitted()
        self.masker = masker
        self.sources = [os.path.abspath(s) for s in sources]

    @property
    def n_voxels(self) -> int:
        return self.masker.n_voxels_

    @property
    def mask_img(self) -> nib.Nifti1Image:
        return self.masker.mask_img_

    def to_image(self, X) -> nib.Nifti1Image:
        return self.masker.inverse_transform(X)

    def save(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        nib.save(self.mask_img, directory / "mask.nii.gz")
        meta = {
            "kind": self.kind,
            "n_voxels": self.n_voxels,
            "zooms": [float(z) for z in self.masker.header_.get_zooms()],
            "sources": self.sources,
        }
        (directory / "space.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory) -> "VolumeSpace":
        directory = Path(directory)
        meta = json.loads((directory / "space.json").read_text())
        # Load into memory so the file handle is not kept open.
        mask_img = nib.load(directory / "mask.nii.gz")
        mask_img = nib.Nifti1Image(np.asarray(mask_img.dataobj), mask_img.affine, mask_img.header)
        masker = FMRIMasker(mask_img).fit()
        zooms = meta["zooms"]
        masker.header_.set_data_shape(mask_img.shape + (1,) * (len(zooms) - 3))
        masker.header_.set_zooms(zooms)
        return cls(masker, meta["sources"])
