"""Small real fMRI data sets that ship with installed packages."""

from __future__ import annotations

import importlib.resources

from .readers import FMRIData, load_fmri

EXAMPLES = ("nitime",)


def load_example(name: str = "nitime") -> FMRIData:
    """Load a named example data set.

    ``"nitime"``: two real 4-D fMRI runs that the nitime package (BSD licence,
    https://nipy.org/nitime) ships as ``nitime/data/fmri1.nii.gz`` and ``fmri2.nii.gz``: each
    10 x 10 x 18 voxels x 40 volumes, int16, TR 1.35 s. They are read through the NIfTI reader
    with a derived mask (all 1800 voxels pass it) as runs 0 and 1 of subject "sub-01":
    80 samples x 1800 voxels.
    """
    if name not in EXAMPLES:
        raise ValueError(f"Unknown example {name!r}; available: {list(EXAMPLES)}")
    try:
        folder = importlib.resources.files("nitime") / "data"
    except ModuleNotFoundError as err:
        raise ImportError("The 'nitime' example needs the nitime package: pip install nitime") from err
    paths = [folder / "fmri1.nii.gz", folder / "fmri2.nii.gz"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"nitime is installed but its example files are missing: {missing}")
    fmri = load_fmri([str(p) for p in paths])
    fmri.source = f"example:{name}"
    return fmri
