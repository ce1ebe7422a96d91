"""fMRI data layer: readers, voxel statistics, splits, writers and example data.

Every function speaks ``(n_samples, n_voxels)`` float32 arrays::

    fmri = load_fmri("sub-01_bold.nii.gz")
    splits = make_splits(fmri, strategy="contiguous")
    stats = compute_voxel_stats(fmri.data, splits["train"])
    save_samples("samples.nii.gz", samples, space=fmri.space)
"""

from .examples import load_example
from .nifti import FMRIMasker, VolumeSpace
from .preprocessing import VectorDataset, VoxelStats, check_finite, compute_voxel_stats
from .readers import ArrowVectors, FMRIData, Float32View, load_fmri, load_space
from .splits import make_splits
from .surface import SurfaceSpace
from .writers import save_samples

__all__ = [
    "ArrowVectors",
    "FMRIData",
    "FMRIMasker",
    "Float32View",
    "SurfaceSpace",
    "VectorDataset",
    "VolumeSpace",
    "VoxelStats",
    "check_finite",
    "compute_voxel_stats",
    "load_example",
    "load_fmri",
    "load_space",
    "make_splits",
    "save_samples",
]
