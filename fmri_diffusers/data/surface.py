"""Surface time series (FreeSurfer MGH/MGZ, GIfTI) <-> ``(n_samples, n_vertices)`` matrices.

An MGH/MGZ time series has shape ``(n_vertices, 1, 1, n_timepoints)``. A GIfTI time series has
one 1-D data array per time point, or one 2-D data array ``(n_vertices, n_timepoints)`` (the
layout of nibabel's ``agg_data``). Several files (e.g. left then right hemisphere) are
concatenated along vertices in the order given; :class:`SurfaceSpace` remembers the blocks.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from .nifti import image_data, load_image

MGH_EXTS = (".mgh", ".mgz")
GIFTI_EXTS = (".gii",)


def surface_format(path) -> str:
    """``"mgh"`` or ``"gifti"`` from a file name; ValueError otherwise."""
    name = str(path).lower()
    if name.endswith(MGH_EXTS):
        return "mgh"
    if name.endswith(GIFTI_EXTS):
        return "gifti"
    raise ValueError(f"Not a surface file (expected .mgh, .mgz or .gii): {path}")


def hemisphere_name(path, position: int) -> str:
    """Block name from a file name: "lh" / "rh" for FreeSurfer ``lh.`` / ``rh.`` or BIDS
    ``hemi-L`` / ``hemi-R``, else ``part<position>``."""
    name = os.path.basename(str(path))
    for hemi, pattern in (("lh", r"(^|[._-])(lh|hemi-L)([._-]|$)"), ("rh", r"(^|[._-])(rh|hemi-R)([._-]|$)")):
        if re.search(pattern, name):
            return hemi
    return f"part{position}"


def read_surface(path) -> tuple[np.ndarray, dict]:
    """Read one surface time series as ``(n_timepoints, n_vertices)`` float32, plus header info."""
    fmt = surface_format(path)
    img = load_image(path, "surface")
    if fmt == "mgh":
        shape = tuple(int(s) for s in img.shape)  # MGH reports np.int32
        if len(shape) not in (3, 4) or shape[1:3] != (1, 1):
            raise ValueError(
                f"Expected an MGH surface shaped (n_vertices, 1, 1, n_timepoints), got {shape} ({path})"
            )
        data = image_data(img).reshape(shape[0], -1)  # (n_vertices, t)
        info = {"affine": np.asarray(img.affine).tolist(), "meta": {}}
    else:
        arrays = [np.asarray(d.data, dtype=np.float32) for d in img.darrays]
        shapes = [a.shape for a in arrays]
        if len(arrays) == 1 and arrays[0].ndim in (1, 2):
            data = arrays[0].reshape(len(arrays[0]), -1)  # (n_vertices, t)
        elif arrays and all(a.ndim == 1 for a in arrays) and len(set(shapes)) == 1:
            data = np.stack(arrays, axis=1)  # one darray per time point -> (n_vertices, t)
        else:
            raise ValueError(
                "Expected GIfTI data as one (n_vertices,) array per time point or one "
                f"(n_vertices, n_timepoints) array, got arrays of shapes {shapes} ({path})"
            )
        info = {"affine": None, "meta": dict(img.meta)}
    return np.ascontiguousarray(data.T, dtype=np.float32), info


class SurfaceSpace:
    """How to write ``(n_samples, n_vertices)`` vectors back as surface files.

    Parameters
    ----------
    fmt : {"mgh", "gifti"}
        Format of the input files.
    names : list of str
        One name per input file (e.g. ``["lh", "rh"]``), in the concatenation order.
    n_vertices : list of int
        Vertices per file; columns ``[0, n_vertices[0])`` belong to ``names[0]`` and so on.
    affines, metas : list
        Per file, the MGH vox2ras affine (or None) and the GIfTI file metadata (or {}).
    sources : list of str
        Input paths, which the writers refuse to overwrite.

    Saved to a folder as ``space.json``.
    """

    kind = "surface"

    def __init__(self, fmt, names, n_vertices, affines=None, metas=None, sources=()):
        if len(names) != len(n_vertices) or len(set(names)) != len(names):
            raise ValueError(f"Expected one distinct name per surface file, got {names} for {len(n_vertices)} files")
        self.fmt = fmt
        self.names = list(names)
        self.n_vertices = [int(n) for n in n_vertices]
        self.affines = list(affines) if affines is not None else [None] * len(names)
        self.metas = list(metas) if metas is not None else [{} for _ in names]
        self.sources = [os.path.abspath(s) for s in sources]

    @property
    def n_voxels(self) -> int:
        return sum(self.n_vertices)

    def to_images(self, X, fmt: str) -> list[tuple[str, object]]:
        """``(n_samples, n_vertices)`` -> ``[(name, image), ...]``, one image per input file."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_voxels:
            raise ValueError(f"Expected shape (n_samples, {self.n_voxels}), got {X.shape}")
        images = []
        bounds = np.cumsum([0] + self.n_vertices)
        for name, start, stop, affine, meta in zip(self.names, bounds[:-1], bounds[1:], self.affines, self.metas):
            block = X[:, start:stop].T  # (n_vertices, t)
            if fmt == "mgh":
                affine = np.eye(4) if affine is None else np.asarray(affine)
                img = nib.MGHImage(np.ascontiguousarray(block[:, None, None, :]), affine)
            else:
                darrays = [
                    nib.gifti.GiftiDataArray(
                        np.ascontiguousarray(column), intent="NIFTI_INTENT_TIME_SERIES", datatype="NIFTI_TYPE_FLOAT32"
                    )
                    for column in block.T
                ]
                img = nib.gifti.GiftiImage(darrays=darrays, meta=nib.gifti.GiftiMetaData(meta))
            images.append((name, img))
        return images

    def save(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": self.kind,
            "fmt": self.fmt,
            "names": self.names,
            "n_vertices": self.n_vertices,
            "affines": self.affines,
            "metas": self.metas,
            "sources": self.sources,
        }
        (directory / "space.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory) -> "SurfaceSpace":
        meta = json.loads((Path(directory) / "space.json").read_text())
        return cls(meta["fmt"], meta["names"], meta["n_vertices"], meta["affines"], meta["metas"], meta["sources"])
