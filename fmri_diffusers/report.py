"""Score generators and reconstructions side by side, and write the evaluation report.

- :func:`evaluate_generated` scores each generated set (the model, baselines, and a real-vs-real
  ceiling) against held-out and training data on every axis at once: spread, distribution
  distances, spatial structure, a classifier test, precision / recall, memorisation and utility.
- :func:`evaluate_reconstructions` scores paired reconstructions (e.g. VAE vs PCA).
- :func:`write_report` writes ``metrics.json`` and ``report.md``; :func:`format_headline_table`
  gives the report's first table as text for the console.

Why all axes together: against a few held-out samples, Frechet distance and MMD reward a
generator that shrinks towards the mean (the held-out covariance is rank-deficient, so a
Gaussian with 0.6 times the fitted variance "beats" the fitted one). The dispersion ratio, FD
against the training set, KS, C2ST, precision / recall and DCR expose that and memorisation.

The real-vs-real ceiling: split the held-out data with :func:`fmri_diffusers.baselines.split_heldout`,
use one half as ``heldout`` and pass the other as ``generated["real_vs_real"]``: its scores are
what real data reach at that sample size.

Result dictionaries hold only str, int, float, None, lists and dicts (JSON-serialisable); each
metric is ``{"value": float, "ci": [low, high] | None}``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from . import metrics
from .metrics import validate_samples

CEILING = "real_vs_real"
# The generators a model is judged against: the Gaussian in PCA space, and the same plus per-voxel residual noise.
BASELINES = ("pca_gaussian", "pca_gaussian_noise")

# (key, name in the tables, how to read it), in the order of the headline table.
HEADLINE_METRICS = [
    ("dispersion_ratio", "dispersion ratio",
     "total variance / train's: 1 is right; < 1 shrinks to the mean (which flatters FD and MMD "
     "against few held-out samples), > 1 is over-dispersed"),
    ("fd_heldout", "FD vs held-out",
     "Frechet distance to held-out data in the PCA space of train: lower is better; the ceiling "
     "is the floor real data reach at this sample size"),
    ("fd_train", "FD vs train",
     "Frechet distance to the training set: lower is better; far below the ceiling hints at "
     "copying training samples"),
    ("mmd", "MMD^2 vs held-out",
     "unbiased MMD^2 (RBF kernel, bandwidth from train) in PCA space: lower is better, about 0 "
     "at the ceiling"),
    ("ks_mean", "mean KS",
     "mean per-voxel Kolmogorov-Smirnov statistic vs held-out: lower is better; the ceiling "
     "shows the small-sample floor"),
    ("js_divergence", "JS divergence",
     "Jensen-Shannon divergence of all values vs held-out (base 2, 0 to 1): lower is better"),
    ("moment_std_diff", "std difference",
     "absolute difference of per-voxel std, real vs generated, averaged over voxels (data "
     "units): lower is better"),
    ("correlation_similarity", "corr. structure r",
     "r between real and generated voxel-by-voxel correlations: higher is better, up to the "
     "ceiling"),
    ("c2st_auc", "C2ST AUC",
     "cross-validated AUC of a classifier telling generated from held-out (PCA features): "
     "0.5 is indistinguishable, 1 trivially separable"),
    ("precision", "precision",
     "share of generated samples inside the real manifold (fidelity, k-NN balls): higher is "
     "better, compare with the ceiling"),
    ("recall", "recall",
     "share of held-out samples inside the generated manifold (coverage): higher is better, "
     "compare with the ceiling"),
    ("dcr_ratio", "DCR ratio",
     "median distance to the closest training sample / the held-out one's: about 1 is right, "
     "well below 1 suggests memorisation"),
    ("share_closer_than_heldout", "share closer than held-out",
     "share of samples closer to train than any held-out sample: about 0 is right"),
    ("tstr_accuracy", "TSTR accuracy",
     "classifier trained on generated labelled samples, tested on held-out: higher is better, "
     "compare with TRTR (trained on real train)"),
]

RECONSTRUCTION_METRICS = [
    ("pearson_r", "Pearson r (all values)", "higher is better, 1 is perfect"),
    ("voxelwise_r_mean", "mean voxel-wise r",
     "r across samples per voxel, averaged over voxels with defined r: higher is better"),
    ("samplewise_r_mean", "mean sample-wise r",
     "pattern similarity per sample, averaged: higher is better"),
    ("mse", "MSE", "lower is better"),
    ("rmse", "RMSE", "lower is better, in data units"),
    ("mae", "MAE", "lower is better, in data units"),
    ("r2", "R^2", "uniform average over voxels (sklearn): higher is better, 1 is perfect, "
     "0 is predicting each voxel's mean"),
    ("snr_db", "SNR (dB)", "10 log10(mean real^2 / MSE): higher is better"),
    ("psnr_db", "PSNR (dB)", "10 log10(range^2 / MSE), range of the originals: higher is better"),
]


def _entry(value, ci=None) -> dict:
    return {"value": float(value), "ci": None if ci is None else [float(ci[0]), float(ci[1])]}


def _with_ci(fn, *arrays, n_boot: int, seed: int, paired: bool = False) -> dict:
    """``{"value", "ci"}`` of ``fn(*arrays)``, with a bootstrap CI unless ``n_boot`` is 0."""
    if n_boot == 0:
        return _entry(fn(*arrays))
    point, low, high = metrics.bootstrap_ci(fn, *arrays, n_boot=n_boot, seed=seed, paired=paired)
    return _entry(point, (low, high))


def _check_labels(labels, n_train: int, n_heldout: int, generated: dict) -> dict | None:
    """Validated copy of evaluate_generated's ``labels`` (None stays None)."""
    if labels is None:
        return None
    missing = {"train_y", "heldout_y", "generated_y"} - set(labels)
    if missing:
        raise ValueError(
            f"evaluate_generated: labels lacks keys {sorted(missing)}; expected "
            "{'train_y': (n_train,), 'heldout_y': (n_heldout,), 'generated_y': {name: (n,)}}"
        )
    unknown = set(labels["generated_y"]) - set(generated)
    if unknown:
        raise ValueError(f"evaluate_generated: labels['generated_y'] names unknown generators {sorted(unknown)}")
    name = "evaluate_generated"
    return {
        "train_y": metrics.validate_labels(labels["train_y"], n_train, "labels['train_y']", name),
        "heldout_y": metrics.validate_labels(labels["heldout_y"], n_heldout, "labels['heldout_y']", name),
        "generated_y": {
            g: metrics.validate_labels(y, generated[g].shape[0], f"labels['generated_y'][{g!r}]", name)
            for g, y in labels["generated_y"].items()
        },
    }


def evaluate_generated(
    train,
    heldout,
    generated: dict,
    *,
    labels: dict | None = None,
    n_pca: int = 20,
    k: int = 5,
    seed: int = 0,
    n_boot: int = 200,
    equalise_n: bool = True,
    n_subsets: int = 20,
) -> dict:
    """Score each generated set against held-out and training data, side by side.

    Parameters
    ----------
    train, heldout : array-like, shape (n_train, n_voxels) and (n_heldout, n_voxels)
        Real training data (the generators were fitted on it) and real held-out data.
    generated : dict of str to array-like (n_generated, n_voxels)
        E.g. ``{"model": ..., "pca_gaussian": ..., "real_vs_real": ...}`` (put the ceiling,
        named ``"real_vs_real"``, last or anywhere: tables show it last).
    labels : dict, optional
        ``{"train_y": (n_train,), "heldout_y": (n_heldout,), "generated_y": {name: (n,)}}``
        to add TSTR accuracy for the generators listed, and TRTR under ``"reference"``.
    n_pca : int
        Components of the PCA fitted on ``train`` (capped at ``n_train - 1``); FD, MMD, C2ST
        and precision / recall use these features.
    k : int
        Neighbours for precision / recall (capped at the smallest set size - 1).
    n_boot : int
        Bootstrap replicates for the CIs of dispersion ratio and both FDs of a set scored once
        (the ceiling, or every set with ``equalise_n=False``; 0: no CIs). Metrics
        built on nearest neighbours or kernels (precision / recall, DCR, MMD) are biased by the
        duplicated rows a bootstrap draws, and C2ST is already cross-validated: no CI. With
        fewer than about 20 samples the percentile intervals of FD are themselves biased
        upwards (they can exclude the point estimate): read them as rough.
    equalise_n : bool
        Score every generated set at the size of the smallest, so that metrics whose values
        depend on sample size (FD bias, MMD, KS, C2ST, precision / recall) compare generators and
        the ceiling at the same n. A larger set is scored on ``n_subsets`` random subsets of that
        size: each metric is their mean, its bracket their 2.5-97.5% range (for every metric).
    n_subsets : int
        Subsets per larger generated set (see ``equalise_n``).

    Returns
    -------
    dict
        ``{"settings": {...}, "generators": {name: {metric: {"value", "ci"}}},
        "reference": {"trtr_accuracy": ...}}`` (``reference`` only with labels).
    """
    name = "evaluate_generated"
    train = validate_samples(train, "train", name, min_samples=3)
    heldout = validate_samples(heldout, "heldout", name, min_samples=2)
    if not generated:
        raise ValueError(f"{name}: generated is empty; pass {{name: samples}}")
    gens = {g: validate_samples(x, g, name, min_samples=2) for g, x in generated.items()}
    for what, arr in [("heldout", heldout), *gens.items()]:
        if arr.shape[1] != train.shape[1]:
            raise ValueError(f"{name}: {what} has {arr.shape[1]} voxels, train has {train.shape[1]}")
    labels = _check_labels(labels, train.shape[0], heldout.shape[0], gens)

    # 1. Shared feature space and scales, fixed across generators.
    pca = metrics.fit_pca(train, n_pca, seed=seed)
    f_train, f_held = pca.transform(train), pca.transform(heldout)  # (n, n_pca)
    bandwidth = metrics.median_pairwise_distance(f_train)
    train_variance = metrics.total_variance(train)  # dispersion ratio's denominator, computed once
    n_eval = min(x.shape[0] for x in gens.values())
    n_min = min(heldout.shape[0], n_eval)
    k_eff = max(1, min(k, n_min - 1))
    folds = max(2, min(5, n_min))

    def score(x) -> dict[str, float]:
        """Every axis but utility for one generated set x (n, n_voxels)."""
        f_gen = pca.transform(x)
        s = {
            "dispersion_ratio": metrics.total_variance(x) / train_variance,
            "fd_heldout": metrics.frechet_distance(f_held, f_gen),
            "fd_train": metrics.frechet_distance(f_train, f_gen),
            "mmd": metrics.mmd_rbf(f_held, f_gen, bandwidth=bandwidth),
            "ks_mean": metrics.ks_statistic(heldout, x).mean(),
            "js_divergence": metrics.js_divergence(heldout, x),
            **{f"moment_{m}_diff": d for m, d in metrics.moments_difference(heldout, x).items()},
            "correlation_similarity": metrics.correlation_structure_similarity(heldout, x),
            "correlation_distance": metrics.correlation_matrix_distance(heldout, x),
            "c2st_auc": metrics.c2st_auc(f_held, f_gen, cv=folds, seed=seed),
            **metrics.knn_precision_recall(f_held, f_gen, k=k_eff),
            **metrics.memorisation_summary(train, x, heldout),
        }
        return s

    # 2. Every axis for every generator. With equalise_n, a set larger than the smallest one (the
    # ceiling, usually) is scored on n_subsets random subsets of that size: the value is their mean
    # and the bracket their 2.5-97.5% range -- the spread of scoring only n_eval samples.
    rng = np.random.default_rng(seed)
    scores = {}
    for g, x in gens.items():
        if not equalise_n or x.shape[0] == n_eval:
            s = {key: _entry(v) for key, v in score(x).items()}
            # A single set: bootstrap CIs for the metrics where resampling rows is sound.
            s["dispersion_ratio"] = _with_ci(lambda a: metrics.total_variance(a) / train_variance, x,
                                             n_boot=n_boot, seed=seed)
            for key, ref in (("fd_heldout", f_held), ("fd_train", f_train)):
                s[key] = _with_ci(metrics.frechet_distance, ref, pca.transform(x), n_boot=n_boot, seed=seed)
        else:
            runs = []
            for _ in range(n_subsets):
                rows = np.sort(rng.choice(x.shape[0], n_eval, replace=False))
                runs.append(score(x[rows]))
            s = {key: _entry(np.mean([r[key] for r in runs]),
                             np.percentile([r[key] for r in runs], [2.5, 97.5]))
                 for key in runs[0]}
        # Utility uses every labelled sample of the set: more generated data is what TSTR is for.
        if labels is not None and g in labels["generated_y"]:
            s["tstr_accuracy"] = _entry(metrics.tstr_accuracy(x, labels["generated_y"][g], heldout,
                                                              labels["heldout_y"], seed=seed))
        scores[g] = s

    results = {
        "settings": {
            "n_train": int(train.shape[0]), "n_heldout": int(heldout.shape[0]),
            "n_voxels": int(train.shape[1]), "n_generated": n_eval if equalise_n else None,
            "n_subsets": n_subsets if equalise_n else None,
            "n_pca": int(pca.n_components_), "knn_k": k_eff, "c2st_folds": folds,
            "mmd_bandwidth": bandwidth, "n_boot": n_boot, "seed": seed,
        },
        "generators": scores,
    }
    if labels is not None:
        results["reference"] = {"trtr_accuracy": metrics.tstr_accuracy(
            train, labels["train_y"], heldout, labels["heldout_y"], seed=seed)}
    return results


def _mean_voxelwise_r(real: np.ndarray, recon: np.ndarray) -> float:
    """Mean voxel-wise r over the voxels where r is defined (not constant)."""
    vox = metrics.voxelwise_r(real, recon)
    return float(vox[~np.isnan(vox)].mean()) if not np.isnan(vox).all() else float("nan")


def _mean_samplewise_r(real: np.ndarray, recon: np.ndarray) -> float:
    return float(np.mean(metrics.samplewise_r(real, recon)))


# Keys of RECONSTRUCTION_METRICS -> metric(real, recon) -> float.
_RECONSTRUCTION_FNS = {
    "pearson_r": metrics.pearson_r,
    "voxelwise_r_mean": _mean_voxelwise_r,
    "samplewise_r_mean": _mean_samplewise_r,
    "mse": metrics.mse,
    "rmse": metrics.rmse,
    "mae": metrics.mae,
    "r2": metrics.r2_score,
    "snr_db": metrics.snr_db,
    "psnr_db": metrics.psnr_db,
}


def evaluate_reconstructions(x, recons: dict, *, n_boot: int = 200, seed: int = 0) -> dict:
    """Score reconstructions of ``x`` (n_samples, n_voxels) by each method in ``recons``.

    Each metric gets a paired percentile bootstrap CI over samples (``n_boot=0``: none).
    ``voxelwise_r_undefined`` counts voxels whose r is undefined (constant, e.g. masked out);
    they are left out of ``voxelwise_r_mean``.

    Returns
    -------
    dict
        ``{"n_samples", "n_voxels", "methods": {name: {metric: {"value", "ci"}}}}``
    """
    name = "evaluate_reconstructions"
    x = validate_samples(x, "x", name, min_samples=2)
    if not recons:
        raise ValueError(f"{name}: recons is empty; pass {{name: reconstructions}}")
    methods = {}
    for method, recon in recons.items():
        recon = validate_samples(recon, method, name, min_samples=2)
        if recon.shape != x.shape:
            raise ValueError(f"{name}: {method} has shape {recon.shape}, expected {x.shape}")
        scores = {key: _with_ci(fn, x, recon, n_boot=n_boot, seed=seed, paired=True)
                  for key, fn in _RECONSTRUCTION_FNS.items()}
        scores["voxelwise_r_undefined"] = int(np.isnan(metrics.voxelwise_r(x, recon)).sum())
        methods[method] = scores
    return {"n_samples": int(x.shape[0]), "n_voxels": int(x.shape[1]), "methods": methods}


# --------------------------------------------------------------------------------------------
# Tables and files
# --------------------------------------------------------------------------------------------
def _fmt(entry) -> str:
    if entry is None:
        return "-"
    value = entry["value"]
    if value is None or not math.isfinite(value):
        return "n/a" if value is None else str(value)
    text = f"{value:.4g}"
    if entry.get("ci") is not None:
        low, high = entry["ci"]
        text += f" [{low:.3g}, {high:.3g}]"
    return text


def _table(rows, columns: list[str], scores: dict) -> str:
    """Markdown table: one row per (key, label, how to read), one column per scored name."""
    lines = ["| metric | " + " | ".join(columns) + " | how to read |",
             "|---" * (len(columns) + 2) + "|"]
    for key, label, how in rows:
        if all(key not in scores[c] for c in columns):
            continue
        cells = [_fmt(scores[c].get(key)) for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {how} |")
    return "\n".join(lines)


def format_headline_table(results: dict) -> str:
    """The headline generation table (Markdown), as the report's first table.

    ``results`` is the dict :func:`write_report` takes: ``results["generation"]`` is the
    output of :func:`evaluate_generated`. Columns: each generator, the ceiling last; cells are
    ``value [CI low, CI high]``.
    """
    if "generation" not in results:
        raise ValueError(
            f"format_headline_table: results lacks key 'generation' (the output of "
            f"evaluate_generated); got keys {sorted(results)}"
        )
    generation = results["generation"]
    scores = generation["generators"]
    columns = [g for g in scores if g != CEILING] + [g for g in scores if g == CEILING]
    table = _table(HEADLINE_METRICS, columns, scores)
    if "reference" in generation:
        table += f"\n\nTRTR accuracy (trained on real train): {generation['reference']['trtr_accuracy']:.4g}"
    return table


# (metric key, name, rule): the axes on which a model is judged against a baseline, all at once.
VERDICT_AXES = [
    ("dispersion_ratio", "dispersion ratio", "closer to 1"),
    ("fd_train", "FD vs train", "lower"),
    ("ks_mean", "mean KS", "lower"),
    ("c2st_auc", "C2ST AUC", "closer to 0.5"),
    ("precision", "precision", "higher"),
    ("recall", "recall", "higher"),
    ("dcr_ratio", "DCR ratio (memorisation)", ">= ceiling"),
]


def axis_loss(rule: str, value: float) -> float:
    """Distance of ``value`` from ideal under a VERDICT_AXES rule (lower is better)."""
    if rule == "closer to 1":
        return abs(value - 1.0)
    if rule == "closer to 0.5":
        return abs(value - 0.5)
    return -value if rule == "higher" else value


def judge(generation: dict, model: str = "model", baseline: str = "pca_gaussian") -> list[dict]:
    """Per axis: is ``model`` at least as good as ``baseline`` (DCR: no closer to train than the ceiling)?

    Returns rows ``{"key", "name", "rule", "model", "baseline", "ceiling", "ok"}`` (ceiling None when absent).
    """
    scores = generation["generators"]
    for name in (model, baseline):
        if name not in scores:
            raise ValueError(f"judge: no generator {name!r} in the results; have {sorted(scores)}")
    rows = []
    for key, name, rule in VERDICT_AXES:
        m, b = scores[model][key]["value"], scores[baseline][key]["value"]
        c = scores[CEILING][key]["value"] if CEILING in scores else None
        ok = (m >= c if c is not None else None) if rule == ">= ceiling" else axis_loss(rule, m) <= axis_loss(rule, b)
        rows.append({"key": key, "name": name, "rule": rule, "model": m, "baseline": b, "ceiling": c, "ok": ok})
    return rows


def format_verdict(results: dict, model: str = "model", baseline: str = "pca_gaussian") -> str:
    """Markdown: the per-axis verdict of :func:`judge` and one line judging all axes together."""
    rows = judge(results["generation"], model, baseline)
    lines = [f"| axis | rule | {model} | {baseline} | {CEILING} | {model} as good as {baseline}? |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ceiling = "" if r["ceiling"] is None else f"{r['ceiling']:.4g}"
        ok = "n/a" if r["ok"] is None else ("yes" if r["ok"] else "**no**")
        lines.append(f"| {r['name']} | {r['rule']} | {r['model']:.4g} | {r['baseline']:.4g} | {ceiling} | {ok} |")
    failed = [r["name"] for r in rows if r["ok"] is False]
    lines.append("")
    lines.append(f"All axes at once: {'**no** (' + ', '.join(failed) + ')' if failed else 'yes'}. "
                 "Point estimates; see the brackets above for how much they move at this sample size.")
    return "\n".join(lines)


def format_reconstruction_table(results: dict) -> str:
    """The reconstruction table (Markdown) from ``results["reconstruction"]``."""
    methods = results["reconstruction"]["methods"]
    return _table(RECONSTRUCTION_METRICS, list(methods), methods)


def _strict_json(obj):
    """Replace NaN and infinities by None: metrics.json stays valid JSON for every parser."""
    if isinstance(obj, dict):
        return {str(k): _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_report(results: dict, out_dir, figures: dict | None = None,
                 title: str = "fmri-diffusers evaluation") -> Path:
    """Write ``metrics.json`` and ``report.md`` into ``out_dir``; return the report's path.

    Parameters
    ----------
    results : dict
        ``{"generation": evaluate_generated(...), "reconstruction": evaluate_reconstructions(...)}``;
        either key may be missing, other keys (run settings, ...) go to metrics.json only.
    figures : dict of str to path, optional
        Caption -> PNG file, linked in the report by a path relative to ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(_strict_json(results), indent=2, allow_nan=False))

    parts = [f"# {title}"]
    if "generation" in results:
        s = results["generation"]["settings"]
        parts += [
            "## Generation: headline metrics",
            f"Every generator is scored against {s['n_heldout']} held-out and {s['n_train']} "
            f"training samples ({s['n_voxels']} voxels), each with {s['n_generated'] or 'all its'} "
            f"samples; FD, MMD, C2ST and precision / recall use {s['n_pca']} PCA components of "
            f"the training data (k = {s['knn_k']}). `{CEILING}` is real held-out data scored as "
            "if generated: the ceiling. Brackets: for a generator with more samples than that, the "
            f"2.5-97.5% range over {s.get('n_subsets') or 0} random subsets of that size (how much "
            "scoring so few samples varies); for a set scored once (the ceiling), a 95% percentile "
            "bootstrap CI of dispersion and FD (rough below about 20 samples). Read the rows together: FD "
            "and MMD against few held-out samples favour generators that shrink to the mean, "
            "which the dispersion ratio exposes.",
            format_headline_table(results),
        ]
        present = results["generation"]["generators"]
        for baseline in BASELINES:
            if "model" in present and baseline in present:
                parts += [f"## Verdict: the model against `{baseline}`, on every axis at once",
                          format_verdict(results, baseline=baseline)]
    if "reconstruction" in results:
        parts += [
            "## Reconstruction",
            f"{results['reconstruction']['n_samples']} held-out samples; brackets: 95% paired "
            "bootstrap CI.",
            format_reconstruction_table(results),
        ]
    if figures:
        parts.append("## Figures")
        for caption, path in figures.items():
            if not Path(path).is_file():
                raise ValueError(f"write_report: figure {caption!r} not found at {path}")
            rel = Path(os.path.relpath(Path(path).resolve(), out_dir.resolve())).as_posix()
            parts.append(f"### {caption}\n\n![{caption}]({rel})")
    report = out_dir / "report.md"
    report.write_text("\n\n".join(parts) + "\n")
    return report
