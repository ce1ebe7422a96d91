"""Readers: every supported format becomes an :class:`FMRIData` of ``(n_samples, n_voxels)`` float32.

=====================  ====================================================================
source                 how it is read
=====================  ====================================================================
``.npz``               one key per subject (``[n_samples, n_voxels]`` each), or ``data_key``
``.npy``               memory-mapped (``np.load(mmap_mode="r")``)
``.mat``               ``scipy.io.loadmat`` with ``data_key``; v7.3 (HDF5) needs h5py
``.nii``/``.nii.gz``   4-D, one file per run, through :class:`~.nifti.FMRIMasker`
``.mgh``/``.mgz``/``.gii``  surface time series, several files joined along vertices
folder / ``.arrow``    a ``datasets`` dataset, memory-mapped, wrapped as :class:`ArrowVectors`
``example:<name>``     a packaged example (:func:`~.examples.load_example`)
=====================  ====================================================================
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .nifti import FMRIMasker, VolumeSpace, load_image
from .preprocessing import check_finite
from .surface import SurfaceSpace, hemisphere_name, read_surface, surface_format

logger = logging.getLogger(__name__)

DEFAULT_SUBJECT = "sub-01"  # subject name of single-subject sources


@dataclass
class FMRIData:
    """``(n_samples, n_voxels)`` fMRI vectors plus per-sample metadata.

    Attributes
    ----------
    data : np.ndarray, np.memmap, Float32View or ArrowVectors
        ``data[int_index_array]`` returns a float32 ndarray batch ``(B, n_voxels)``.
    subjects : (n_samples,) str
    runs : (n_samples,) int64
        Run (acquisition) index; samples of one (subject, run) are consecutive in time.
    labels : (n_samples,) int64 or None
    keys : (n_samples,) str
        The file key each sample came from (npz/mat), else "".
    space : VolumeSpace, SurfaceSpace or None
        How to write vectors back as images; has ``save(dir)`` / ``load(dir)``.
    source : str
        Where the data came from.
    """

    data: object
    subjects: np.ndarray
    runs: np.ndarray
    labels: np.ndarray | None
    keys: np.ndarray
    space: object
    source: str

    def __post_init__(self):
        n = len(self.data)
        for name in ("subjects", "runs", "keys") + (("labels",) if self.labels is not None else ()):
            if len(getattr(self, name)) != n:
                raise ValueError(f"FMRIData.{name} has {len(getattr(self, name))} entries for {n} samples")

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_voxels(self) -> int:
        return int(self.data.shape[1])


# -- lazily read matrices ----------------------------------------------------------------------
def _rows(index, n: int) -> np.ndarray:
    """An int, slice or int array -> int64 row numbers in [0, n)."""
    if isinstance(index, slice):
        return np.arange(n)[index]
    rows = np.asarray(index)
    if rows.dtype == bool or not np.issubdtype(rows.dtype, np.integer):
        raise TypeError(f"Expected an int index array or a slice, got dtype {rows.dtype}")
    rows = np.where(rows < 0, rows + n, rows).astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"Index out of range for {n} samples")
    return rows


class Float32View:
    """A float64 (memory-mapped) matrix seen as float32: rows are converted when read.

    ``.npy`` files are opened memory-mapped; converting a float64 file up front would load it
    whole, so this wrapper converts each batch instead. Rewrite the file as float32 to halve
    disk reads.
    """

    def __init__(self, base):
        self.base = base
        self.shape = base.shape
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self.base[index], dtype=np.float32)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.base, dtype=dtype or np.float32)


class ArrowVectors:
    """A fixed-length vector column of a memory-mapped Arrow table as ``(n_samples, n_voxels)``.

    Each Arrow chunk's values buffer is viewed zero-copy as a numpy ``(rows, n_voxels)`` array;
    ``__getitem__`` groups the requested rows by chunk and gathers with one fancy index per chunk,
    so no Python runs per row.

    Parameters
    ----------
    column : pyarrow.ChunkedArray or Array
        ``fixed_size_list<float32|float64>`` (``datasets`` ``List(Value("float32"), length=V)``),
        or a variable list whose rows all have the same length. No nulls.
    """

    def __init__(self, column):
        import pyarrow as pa

        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        self._views = []
        width = None
        for chunk in chunks:
            if len(chunk) == 0:
                continue
            if chunk.null_count:
                raise ValueError(f"The vector column has {chunk.null_count} null rows")
            if pa.types.is_fixed_size_list(chunk.type):
                lengths = np.array([chunk.type.list_size])
            elif pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
                lengths = np.unique(np.diff(chunk.offsets.to_numpy()))
            else:
                raise TypeError(f"Expected a list column of float vectors, got {chunk.type}")
            if len(lengths) != 1 or (width is not None and lengths[0] != width):
                raise ValueError("Rows of the vector column have different lengths; expected one length (n_voxels)")
            width = int(lengths[0])
            values = chunk.flatten()  # honours the chunk's slice offset
            if not (pa.types.is_float32(values.type) or pa.types.is_float64(values.type)):
                raise TypeError(f"Expected float32 or float64 vectors, got {values.type}")
            self._views.append(values.to_numpy(zero_copy_only=True).reshape(len(chunk), width))
        if not self._views:
            raise ValueError("The vector column is empty")
        self._starts = np.cumsum([0] + [len(v) for v in self._views])  # (n_chunks + 1,)
        self.shape = (int(self._starts[-1]), width)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self[np.array([index])][0]
        rows = _rows(index, len(self))
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        chunk = np.searchsorted(self._starts, rows, side="right") - 1  # chunk of each row
        order = np.argsort(chunk, kind="stable")
        bounds = np.flatnonzero(np.diff(chunk[order])) + 1
        for group in np.split(order, bounds):
            if group.size:
                c = chunk[group[0]]
                out[group] = self._views[c][rows[group] - self._starts[c]]
        return out

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype or np.float32)


# -- helpers -----------------------------------------------------------------------------------
def _as_2d(array, where: str) -> np.ndarray:
    if array.ndim != 2:
        raise ValueError(f"Expected shape (n_samples, n_voxels), got {array.shape} (key {where})")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"Expected numeric data, got dtype {array.dtype} (key {where})")
    return array


def _as_labels(values, n: int, where: str) -> np.ndarray:
    """Squeeze to ``(n,)`` int64; labels stored as (n, 1) in MATLAB files are common."""
    labels = np.asarray(values).squeeze()
    if labels.shape != (n,):
        raise ValueError(f"Expected labels of shape ({n},) (or ({n}, 1)), got {np.shape(values)} (key {where})")
    if not np.issubdtype(labels.dtype, np.number) or not np.all(np.mod(labels, 1) == 0):
        raise ValueError(f"Expected integer class labels, got dtype {labels.dtype} (key {where})")
    return labels.astype(np.int64)


def _as_key_list(keys) -> list[str] | None:
    if keys is None:
        return None
    return [keys] if isinstance(keys, str) else list(keys)


def _missing_key(path, key, existing) -> ValueError:
    return ValueError(f"Key {key!r} not found in {path}; it holds: {sorted(existing)}")


def _from_keyed(mapping, path, data_key, label_key, fmt: str) -> FMRIData:
    """Build FMRIData from a dict-like file (npz/mat) holding named arrays."""
    existing = list(mapping.keys())
    data_keys = _as_key_list(data_key)
    label_keys = _as_key_list(label_key)
    by_subject = data_keys is None
    if by_subject:
        if label_keys is not None:
            raise ValueError("label_key needs data_key: name the data arrays too")
        if fmt == "mat" and len(existing) != 1:
            raise ValueError(f"Pass data_key to choose the data in {path}; it holds: {sorted(existing)}")
        data_keys = existing  # original layout: one key per subject
    if label_keys is not None and len(label_keys) != len(data_keys):
        raise ValueError(f"label_key must list one key per data_key, got {label_keys} for {data_keys}")
    blocks, labels, n_voxels = [], [], None
    for i, key in enumerate(data_keys):
        if key not in mapping:
            raise _missing_key(path, key, existing)
        block = _as_2d(np.asarray(mapping[key]), key)
        if n_voxels is not None and block.shape[1] != n_voxels[1]:
            raise ValueError(
                f"Voxel counts differ in {path}: key {n_voxels[0]!r} has {n_voxels[1]} voxels, "
                f"key {key!r} has {block.shape[1]}"
            )
        n_voxels = (key, block.shape[1])
        blocks.append(block.astype(np.float32))
        if label_keys is not None:
            if label_keys[i] not in mapping:
                raise _missing_key(path, label_keys[i], existing)
            labels.append(_as_labels(mapping[label_keys[i]], len(block), label_keys[i]))
    sizes = [len(b) for b in blocks]
    keys = np.repeat(np.array(data_keys, dtype=str), sizes)
    return FMRIData(
        data=np.concatenate(blocks, axis=0),
        subjects=keys if by_subject else np.full(sum(sizes), DEFAULT_SUBJECT),
        # one run per subject key; with named keys each key is its own block of samples (run i)
        runs=np.zeros(sum(sizes), np.int64) if by_subject else np.repeat(np.arange(len(blocks)), sizes),
        labels=np.concatenate(labels) if label_keys is not None else None,
        keys=keys,
        space=None,
        source=str(path),
    )


def _single_block(data, source: str, space=None, labels=None) -> FMRIData:
    n = len(data)
    return FMRIData(
        data=data,
        subjects=np.full(n, DEFAULT_SUBJECT),
        runs=np.zeros(n, np.int64),
        labels=labels,
        keys=np.full(n, ""),
        space=space,
        source=source,
    )


# -- one reader per format ---------------------------------------------------------------------
def _read_npz(path, data_key, label_key) -> FMRIData:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise ValueError(f"Cannot read .npz file {path}: {err}") from err
    return _from_keyed(arrays, path, data_key, label_key, "npz")


def _read_npy(path) -> FMRIData:
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"Cannot read .npy file {path}: {err}") from err
    if data.ndim != 2:
        raise ValueError(f"Expected shape (n_samples, n_voxels), got {data.shape} ({path})")
    if data.dtype == np.float64:
        logger.info("%s is float64: rows are converted to float32 as they are read", path)
        data = Float32View(data)
    elif data.dtype != np.float32:
        raise TypeError(f"Expected a float32 or float64 .npy file, got dtype {data.dtype} ({path})")
    return _single_block(data, str(path))


def _read_mat(path, data_key, label_key) -> FMRIData:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError:  # scipy's answer to MATLAB v7.3 files, which are HDF5
        mat = _read_mat_v73(path)
    except (ValueError, OSError, TypeError, EOFError) as err:
        raise ValueError(f"Cannot read .mat file {path}: {err}") from err
    mat = {k: v for k, v in mat.items() if not k.startswith("__")}
    return _from_keyed(mat, path, data_key, label_key, "mat")


def _read_mat_v73(path) -> dict:
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            f"{path} is a MATLAB v7.3 (HDF5) file; reading it needs h5py (pip install h5py), "
            "or re-save it in MATLAB with save(..., '-v7')"
        ) from err
    with h5py.File(path, "r") as f:
        # MATLAB stores column-major: h5py sees the transposed shape.
        return {k: np.asarray(v).T for k, v in f.items() if isinstance(v, h5py.Dataset)}


def _read_nifti(paths, mask) -> FMRIData:
    images = [load_image(p, "NIfTI") for p in paths]
    masker = FMRIMasker(mask).fit(images)
    runs = [masker.transform(img) for img in images]  # each (t_i, n_voxels)
    sizes = [len(r) for r in runs]
    space = VolumeSpace(masker, sources=[p for p in paths if isinstance(p, (str, os.PathLike))])
    fmri = _single_block(np.concatenate(runs, axis=0), ", ".join(map(str, paths)), space)
    fmri.runs = np.repeat(np.arange(len(runs)), sizes)
    return fmri


def _read_surfaces(paths, surface_order) -> FMRIData:
    formats = {surface_format(p) for p in paths}
    if len(formats) > 1:
        raise ValueError(f"Surface files must share one format, got {[str(p) for p in paths]}")
    names = list(surface_order) if surface_order is not None else [hemisphere_name(p, i) for i, p in enumerate(paths)]
    if len(names) != len(paths):
        raise ValueError(f"surface_order names {len(names)} blocks ({names}) for {len(paths)} files")
    blocks, infos = zip(*(read_surface(p) for p in paths))  # each (t, n_vertices_i)
    if len({len(b) for b in blocks}) > 1:
        counts = {str(p): len(b) for p, b in zip(paths, blocks)}
        raise ValueError(f"Surface files have different numbers of time points: {counts}")
    space = SurfaceSpace(
        formats.pop(), names, [b.shape[1] for b in blocks],
        [i["affine"] for i in infos], [i["meta"] for i in infos], sources=paths,
    )
    return _single_block(np.concatenate(blocks, axis=1), ", ".join(map(str, paths)), space)


def _arrow_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits")
        raise ValueError(f"{path} is a DatasetDict with splits {splits}: pass one split's folder")
    state = path / "state.json"
    if state.exists():
        return [path / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    files = sorted(path.glob("*.arrow"))
    if not files:
        raise ValueError(f"{path} holds no .arrow file and no datasets state.json")
    return files


def _read_arrow(paths, data_key, label_key) -> FMRIData:
    import pyarrow as pa

    tables = []
    for file in [f for p in paths for f in _arrow_files(Path(p))]:
        try:
            try:  # datasets writes the IPC stream format; plain Feather v2 files use the file format
                tables.append(pa.ipc.open_stream(pa.memory_map(str(file))).read_all())
            except pa.ArrowInvalid:
                tables.append(pa.ipc.open_file(pa.memory_map(str(file))).read_all())
        except (pa.ArrowInvalid, OSError) as err:
            raise ValueError(f"Cannot read Arrow file {file}: {err}") from err
    try:
        table = pa.concat_tables(tables)  # zero-copy: keeps the memory-mapped buffers
    except pa.ArrowInvalid as err:
        raise ValueError(f"Arrow files {[str(p) for p in paths]} have different schemas: {err}") from err
    columns = table.column_names
    if data_key is None:
        list_columns = [c for c in columns if pa.types.is_list(table.schema.field(c).type)
                        or pa.types.is_fixed_size_list(table.schema.field(c).type)
                        or pa.types.is_large_list(table.schema.field(c).type)]
        if len(list_columns) != 1:
            raise ValueError(f"Pass data_key to choose the vector column; columns: {columns}")
        data_key = list_columns[0]
    for key in (data_key, label_key):
        if key is not None and key not in columns:
            raise ValueError(f"Column {key!r} not found in {paths[0]}; columns: {columns}")
    data = ArrowVectors(table.column(data_key))
    labels = None
    if label_key is not None:
        labels = _as_labels(table.column(label_key).to_numpy(), len(data), label_key)
    return _single_block(data, ", ".join(map(str, paths)), labels=labels)


# -- public entry ------------------------------------------------------------------------------
def _kind(path) -> str:
    name = str(path).lower()
    if os.path.isdir(path):
        return "arrow"
    for ext, kind in ((".nii.gz", "nifti"), (".nii", "nifti"), (".npz", "npz"), (".npy", "npy"),
                      (".mat", "mat"), (".arrow", "arrow"), (".mgh", "surface"), (".mgz", "surface"),
                      (".gii", "surface")):
        if name.endswith(ext):
            return kind
    raise ValueError(
        f"Unknown file type: {path}. Expected .npz, .npy, .mat, .nii, .nii.gz, .mgh, .mgz, .gii, "
        ".arrow or a datasets folder"
    )


def load_fmri(path, *, data_key=None, label_key=None, mask=None, nonfinite="raise", surface_order=None) -> FMRIData:
    """Read fMRI data as ``(n_samples, n_voxels)`` float32 plus per-sample metadata.

    Parameters
    ----------
    path : str, Path or list of them
        The format follows the extension (see the module docstring). A list of NIfTI files gives
        runs 0..k-1 concatenated in time. A list of surface files is concatenated along vertices
        in the order given (e.g. ``["lh.func.mgz", "rh.func.mgz"]``: left hemisphere's vertices
        first). ``"example:nitime"`` loads a packaged example.
    data_key : str or list of str, optional
        npz/mat: the array(s) holding the data; a list is concatenated in order and
        ``FMRIData.keys`` records each row's key, and each key is its own run. npz without it:
        every key is one subject. Arrow: the vector column (default: the only list column).
    label_key : str or list of str, optional
        The labels, parallel to ``data_key``; squeezed to int64 ``(n,)``.
    mask : str, Path or nibabel image, optional
        NIfTI only: a 3-D mask. Without it one is derived (see :meth:`FMRIMasker.fit`).
    nonfinite : {"raise", "mask"}
        "raise": NaN/Inf in the data raise ValueError with their count and first positions
        (memory-mapped sources are scanned in chunks, one pass over the file). "mask": they are
        kept; call ``compute_voxel_stats(..., nonfinite="mask")`` to mask those voxels.
    surface_order : list of str, optional
        One name per surface file (e.g. ``["lh", "rh"]``), stored in ``space``; the writers
        append it to output names. Default: "lh"/"rh" from the file names, else "part<i>".

    Returns
    -------
    FMRIData
        ``.npy`` and Arrow data stay memory-mapped (``np.memmap``, :class:`Float32View` for
        float64 files, :class:`ArrowVectors`); everything else is an in-memory ndarray.
    """
    if nonfinite not in ("raise", "mask"):
        raise ValueError(f"nonfinite must be 'raise' or 'mask', got {nonfinite!r}")
    if isinstance(path, str) and path.startswith("example:"):
        from .examples import load_example

        return load_example(path.split(":", 1)[1])
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    if not paths:
        raise ValueError("load_fmri needs at least one path")
    for p in paths:
        if isinstance(p, (str, os.PathLike)) and not os.path.exists(p):
            raise FileNotFoundError(f"fMRI file not found: {p}")
    kinds = {_kind(p) if isinstance(p, (str, os.PathLike)) else "nifti" for p in paths}
    if len(kinds) > 1:
        raise ValueError(f"All paths must have one format, got {sorted(kinds)} from {paths}")
    kind = kinds.pop()
    if len(paths) > 1 and kind not in ("nifti", "surface", "arrow"):
        raise ValueError(f"Only NIfTI runs, surface files and Arrow files can be combined, got {paths}")
    if mask is not None and kind != "nifti":
        raise ValueError(f"mask applies to NIfTI images only, got a {kind} source")
    if kind in ("npy", "nifti", "surface") and (data_key is not None or label_key is not None):
        raise ValueError(f"data_key/label_key do not apply to {kind} files ({paths[0]})")

    if kind == "npz":
        fmri = _read_npz(paths[0], data_key, label_key)
    elif kind == "mat":
        fmri = _read_mat(paths[0], data_key, label_key)
    elif kind == "npy":
        fmri = _read_npy(paths[0])
    elif kind == "nifti":
        fmri = _read_nifti(paths, mask)
    elif kind == "surface":
        fmri = _read_surfaces(paths, surface_order)
    else:
        fmri = _read_arrow(paths, data_key, label_key)
    if nonfinite == "raise":
        check_finite(fmri.data, fmri.source)
    return fmri


def load_space(directory):
    """Load the :class:`VolumeSpace` or :class:`SurfaceSpace` saved in ``directory``."""
    meta_file = Path(directory) / "space.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"No space.json in {directory}")
    kind = json.loads(meta_file.read_text()).get("kind")
    classes = {VolumeSpace.kind: VolumeSpace, SurfaceSpace.kind: SurfaceSpace}
    if kind not in classes:
        raise ValueError(f"Unknown space kind {kind!r} in {meta_file}; expected one of {sorted(classes)}")
    return classes[kind].load(directory)
