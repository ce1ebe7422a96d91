"""Figures for training, reconstructions, latent spaces and generated fMRI patterns.

Every function returns a :class:`matplotlib.figure.Figure` and, when ``path`` is given, also
saves it there as PNG (parent folders created). Figures are built with ``Figure()`` directly,
not ``pyplot``: they are never registered with a GUI backend, need no ``plt.show()`` or
``plt.close()``, and are freed like any Python object, so loops that make many figures do not
leak. Data arrays are ``(n_samples, n_voxels)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from . import metrics
from .metrics import validate_samples


def _finish(fig: Figure, path) -> Figure:
    """Save ``fig`` as PNG when ``path`` is given, and return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=100)
    return fig


def _group_logs(logs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (steps, values)}`` from records ``{"step", "name", "value"}`` or a mapping."""
    if isinstance(logs, Mapping):
        pairs = {name: list(points) for name, points in logs.items()}
    else:
        pairs = {}
        for i, record in enumerate(logs):
            missing = {"step", "name", "value"} - set(record)
            if missing:
                raise ValueError(f"plot_training_curves: log record {i} lacks keys {sorted(missing)}")
            pairs.setdefault(record["name"], []).append((record["step"], record["value"]))
    if not pairs:
        raise ValueError("plot_training_curves: no logged values to plot")
    out = {}
    for name, points in pairs.items():
        steps, values = np.asarray(sorted(points), dtype=float).T
        out[name] = (steps, values)
    return out


def plot_training_curves(logs, path=None, log_y: bool = False) -> Figure:
    """One panel per logged quantity against the training step.

    Parameters
    ----------
    logs : iterable of dict or mapping
        Records ``{"step": int, "name": str, "value": float}`` (e.g. lines of a JSONL log), or
        ``{name: [(step, value), ...]}``.
    log_y : bool
        Logarithmic y axes (for losses spanning decades).
    """
    curves = _group_logs(logs)
    ncols = min(4, len(curves))
    nrows = -(-len(curves) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (name, (steps, values)) in zip(axes, curves.items()):
        ax.plot(steps, values, lw=1.2)
        positive = np.all(values > 0)  # a log axis cannot show lr = 0 or negative values
        ax.set(title=name, xlabel="step", yscale="log" if log_y and positive else "linear")
        ax.grid(alpha=0.3)
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    return _finish(fig, path)


def plot_reconstructions(real, recon, n_show: int = 4, path=None, seed: int = 0) -> Figure:
    """Original and reconstructed patterns of ``n_show`` random samples.

    Each row: both patterns over voxel index (left) and reconstructed vs original values with
    their Pearson r (right).
    """
    real = validate_samples(real, "real", "plot_reconstructions")
    recon = validate_samples(recon, "recon", "plot_reconstructions")
    if real.shape != recon.shape:
        raise ValueError(f"plot_reconstructions: real has shape {real.shape}, recon {recon.shape}")
    rows = np.random.default_rng(seed).choice(real.shape[0], min(n_show, real.shape[0]), replace=False)
    r = metrics.samplewise_r(real[rows], recon[rows])
    fig = Figure(figsize=(11, 2.4 * rows.size), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows.size, 2, width_ratios=[3, 1]))
    for (ax_line, ax_scatter), row, r_row in zip(axes, rows, r):
        ax_line.plot(real[row], lw=0.6, label="original")
        ax_line.plot(recon[row], lw=0.6, alpha=0.8, label="reconstruction")
        ax_line.set(title=f"sample {row}", xlabel="voxel", ylabel="value")
        ax_scatter.scatter(real[row], recon[row], s=3, alpha=0.4)
        lims = [min(real[row].min(), recon[row].min()), max(real[row].max(), recon[row].max())]
        ax_scatter.plot(lims, lims, "k--", lw=0.8)
        ax_scatter.set(title=f"r = {r_row:.3f}", xlabel="original", ylabel="reconstruction")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    return _finish(fig, path)


def plot_correlation_distributions(real, recons: Mapping[str, np.ndarray], path=None) -> Figure:
    """Histograms of voxel-wise and sample-wise r between ``real`` and each reconstruction.

    ``recons`` maps a method name (e.g. ``"vae"``, ``"pca"``) to its reconstructions of
    ``real``. Voxels with undefined r (constant) are left out and counted in the legend.
    """
    if not recons:
        raise ValueError("plot_correlation_distributions: recons is empty; pass {name: recon}")
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax_vox, ax_smp = fig.subplots(1, 2)
    bins = np.linspace(-1, 1, 41)
    for name, recon in recons.items():
        vox = metrics.voxelwise_r(real, recon)
        n_undefined = int(np.isnan(vox).sum())
        vox = vox[~np.isnan(vox)]
        extra = f", {n_undefined} undefined" if n_undefined else ""
        ax_vox.hist(vox, bins=bins, histtype="step", lw=1.5,
                    label=f"{name} (median {np.median(vox):.2f}{extra})")
        smp = metrics.samplewise_r(real, recon)
        ax_smp.hist(smp, bins=bins, histtype="step", lw=1.5, label=f"{name} (median {np.median(smp):.2f})")
    ax_vox.set(title="voxel-wise r (across samples)", xlabel="Pearson r", ylabel="voxels")
    ax_smp.set(title="sample-wise r (across voxels)", xlabel="Pearson r", ylabel="samples")
    for ax in (ax_vox, ax_smp):
        ax.legend(fontsize=8, loc="upper left")
    return _finish(fig, path)


def _categorical_scatter(ax, xy: np.ndarray, labels, label_name: str) -> None:
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=12, alpha=0.8)
        return
    for value in np.unique(labels):
        rows = labels == value
        ax.scatter(xy[rows, 0], xy[rows, 1], s=12, alpha=0.8, label=f"{label_name} {value}")
    ax.legend(fontsize=8, markerscale=1.5)


def plot_latent_space(latents, labels=None, path=None, label_name: str = "label",
                      perplexity: float = 30.0, seed: int = 0) -> Figure:
    """2-D PCA and t-SNE views of latent vectors ``(n_samples, latent_dim)``.

    Points are coloured by ``labels`` (shape ``(n_samples,)``: condition, subject, ...).
    The t-SNE perplexity is clipped to ``(n_samples - 1) / 3`` so small sets still embed.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    latents = validate_samples(latents, "latents", "plot_latent_space", min_samples=4)
    if labels is not None:
        labels = metrics.validate_labels(labels, latents.shape[0], "labels", "plot_latent_space")
    n_pcs = min(2, latents.shape[1])
    pcs = PCA(n_components=n_pcs, random_state=seed).fit_transform(latents)
    pcs = np.column_stack([pcs, np.zeros((pcs.shape[0], 2 - n_pcs))])  # 1-D latents: y = 0
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (latents.shape[0] - 1) / 3),
                init="pca", random_state=seed).fit_transform(latents)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    for ax, xy, title in zip(fig.subplots(1, 2), (pcs, tsne), ("PCA", "t-SNE")):
        _categorical_scatter(ax, xy, labels, label_name)
        ax.set(title=f"latents: {title}", xticks=[], yticks=[])
    return _finish(fig, path)


def plot_value_distributions(real, generated: Mapping[str, np.ndarray], path=None,
                             n_bins: int = 80) -> Figure:
    """Real vs generated: histogram of all values, and per-voxel means and stds.

    ``generated`` maps a generator name to its samples ``(n_generated, n_voxels)``.
    """
    real = validate_samples(real, "real", "plot_value_distributions", min_samples=2)
    gens = {name: validate_samples(g, name, "plot_value_distributions", min_samples=2)
            for name, g in generated.items()}
    fig = Figure(figsize=(14, 4), layout="constrained")
    ax_hist, ax_mean, ax_std = fig.subplots(1, 3)
    lo = min(real.min(), *(g.min() for g in gens.values()))
    hi = max(real.max(), *(g.max() for g in gens.values()))
    bins = np.linspace(lo, hi, n_bins + 1)
    ax_hist.hist(real.ravel(), bins=bins, density=True, histtype="stepfilled", alpha=0.3,
                 color="k", label="real")
    for name, gen in gens.items():
        ax_hist.hist(gen.ravel(), bins=bins, density=True, histtype="step", lw=1.3, label=name)
        ax_mean.scatter(real.mean(0), gen.mean(0), s=3, alpha=0.4, label=name)
        ax_std.scatter(real.std(0), gen.std(0), s=3, alpha=0.4, label=name)
    ax_hist.set(title="all values", xlabel="value", ylabel="density")
    for ax, what in ((ax_mean, "mean"), (ax_std, "std")):
        lims = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
        ax.plot(lims, lims, "k--", lw=0.8)
        ax.set(title=f"per-voxel {what}", xlabel=f"real {what}", ylabel=f"generated {what}")
    for ax in (ax_hist, ax_mean, ax_std):
        ax.legend(fontsize=8, markerscale=3)
    return _finish(fig, path)


def plot_correlation_structure(real, generated: Mapping[str, np.ndarray], path=None,
                               n_voxels: int = 60, seed: int = 0) -> Figure:
    """Side-by-side voxel correlation matrices of real and generated data on a voxel subset.

    The same ``n_voxels`` random voxels (among those varying in every array, in index order) are
    shown for all panels, on one colour scale [-1, 1].
    """
    arrays = {"real": validate_samples(real, "real", "plot_correlation_structure", min_samples=2)}
    for name, gen in generated.items():
        arrays[name] = validate_samples(gen, name, "plot_correlation_structure", min_samples=2)
    varying = np.flatnonzero(np.logical_and.reduce([a.std(axis=0) > 0 for a in arrays.values()]))
    if varying.size < 2:
        raise ValueError("plot_correlation_structure needs at least 2 voxels varying in every array")
    rng = np.random.default_rng(seed)
    voxels = np.sort(rng.choice(varying, min(n_voxels, varying.size), replace=False))
    fig = Figure(figsize=(3.6 * len(arrays) + 1, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(arrays)))
    for ax, (name, arr) in zip(axes, arrays.items()):
        image = ax.imshow(np.corrcoef(arr[:, voxels], rowvar=False), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set(title=name, xticks=[], yticks=[], xlabel=f"{voxels.size} voxels")
    fig.colorbar(image, ax=axes.tolist(), shrink=0.8, label="Pearson r")
    return _finish(fig, path)


def plot_brain_maps(images: Sequence[tuple[str, object]], path=None, cut_coords=5,
                    bg_img=None, threshold=None) -> Figure:
    """Axial slices of 3-D NIfTI patterns, one row per ``(title, image)``.

    Use it to compare real, reconstructed and generated patterns written back to brain space
    (e.g. with a masker's ``inverse_transform``). All rows share the slices (chosen on the first
    image when ``cut_coords`` is an int) and a symmetric colour scale, so they are comparable.
    Needs ``nilearn``; ``bg_img=None`` draws no anatomical background (no template download).
    """
    import nibabel as nib
    from nilearn import plotting

    images = list(images)
    if not images:
        raise ValueError("plot_brain_maps needs at least one (title, image) pair")
    for title, img in images:
        if not isinstance(img, nib.spatialimages.SpatialImage) or len(img.shape) != 3:
            raise TypeError(
                f"plot_brain_maps: image {title!r} must be a 3-D nibabel image, got "
                f"{type(img).__name__} of shape {getattr(img, 'shape', None)}"
            )
    if isinstance(cut_coords, int):
        # Evenly spaced axial slices through the volume (find_cut_slices repeats slices on small volumes).
        img = images[0][1]
        nx, ny, nz = img.shape
        ks = np.unique(np.linspace(0, nz - 1, cut_coords + 2)[1:-1].round())
        cut_coords = [float((img.affine @ [(nx - 1) / 2, (ny - 1) / 2, k, 1])[2]) for k in ks]
    vmax = max(float(np.abs(np.asanyarray(img.dataobj)).max()) for _, img in images) or 1.0
    fig = Figure(figsize=(2.2 * len(cut_coords) + 1.5, 2.4 * len(images)))
    for ax, (title, img) in zip(np.atleast_1d(fig.subplots(len(images), 1)), images):
        plotting.plot_stat_map(img, bg_img=bg_img, display_mode="z", cut_coords=cut_coords,
                               axes=ax, figure=fig, title=title, vmax=vmax,
                               threshold=threshold, colorbar=True)
    return _finish(fig, path)

