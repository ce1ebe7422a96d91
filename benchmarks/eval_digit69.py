#!/usr/bin/env python
"""Issue 5's closing experiment: the trained pipeline beside the PCA-Gaussian baseline and the real-vs-real
ceiling on the digit69 fMRI data (90 + 10 trials x 3092 voxels, digits 6 and 9).

    python benchmarks/eval_digit69.py                      # official split + 5-fold CV (~10 min on 2 cores)
    python benchmarks/eval_digit69.py --quick --folds 2    # smoke run: short training, 2 folds

(a) Official split: ``main.py --config configs/digit69.yaml`` trains on ``fmriTrn`` (90 trials) and evaluates
    on ``fmriTest`` (10 trials; the evaluation halves them into a reference and a real-vs-real ceiling, 5 + 5).
(b) Cross-validation over all 100 trials: ``--folds`` stratified folds (by label); each fold is written to a
    temporary ``.npz`` (keys ``train``, ``test``, ``train_labels``, ``test_labels``) and run through the same
    config with ``split: keys``. With 5 folds every held-out set has 20 trials (10 reference + 10 ceiling).
(c) The table: for each headline axis, mean +- sd over folds and the official-split value for ``model``,
    ``pca_gaussian`` and ``real_vs_real``; TSTR beside TRTR; a PASS/FAIL line per axis for "model at least as
    good as pca_gaussian" and one for "no memorisation". The verdict uses the CV means (the official split's
    10 trials leave every metric too noisy to decide on); the official split's verdict is shown beside it.
    Written to ``<out_dir>/summary.md``; per-run reports under ``<out_dir>/official`` and ``<out_dir>/cv``.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # main.py and the training scripts live at the repository root
import main as main_job  # noqa: E402

from fmri_diffusers.data import load_fmri  # noqa: E402
from fmri_diffusers.report import BASELINES, VERDICT_AXES, axis_loss  # noqa: E402

GENERATORS = ("model", "pca_gaussian", "pca_gaussian_noise", "real_vs_real")

AXES = VERDICT_AXES
# Shown for context, no verdict.
EXTRA = [("fd_heldout", "FD vs held-out"), ("mmd", "MMD^2 vs held-out")]

# --quick: enough steps to run every stage, not to learn anything.
QUICK = {"vae": {"max_train_steps": 30}, "ldm": {"max_train_steps": 60}, "evaluate": {"n_boot": 20}}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", type=str, default=str(ROOT / "configs/digit69.yaml"),
                        help="main.py config; its data section names the .mat file (relative: to the repository).")
    parser.add_argument("--out_dir", type=str, default="outputs/digit69")
    parser.add_argument("--folds", type=int, default=5, help="Cross-validation folds over the 100 trials (>= 2).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the fold assignment.")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: small MLPs on a shared 2-core machine run fastest on one).")
    parser.add_argument("--quick", action="store_true", help="Smoke run: a few training steps, 20 bootstrap draws.")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds must be >= 2, got {args.folds}")
    return args


def run_main(config: dict, run_dir: Path) -> tuple[dict, float]:
    """``main.py --mode both`` on ``config`` (written to ``run_dir/config.yaml``); returns (results, seconds)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump({**config, "output_dir": str(run_dir)}, sort_keys=False))
    # Each run builds its own Accelerator: accelerate keeps process-wide singletons.
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # progress bars
        results = main_job.main(main_job.parse_args(["--config", str(config_path), "--overwrite_output_dir"]))
    return results, time.perf_counter() - start


def fold_metrics(results: dict) -> dict:
    """{generator: {metric: value}}, TRTR under "reference" and the sample sizes under "settings"."""
    generation = results["generation"]
    out = {g: {k: v["value"] for k, v in generation["generators"][g].items()} for g in GENERATORS}
    out["reference"] = {"trtr_accuracy": generation["reference"]["trtr_accuracy"]}
    out["settings"] = generation["settings"]
    return out


def as_good(rule: str, model, baseline, ceiling) -> bool:
    """Whether ``model`` is at least as good as ``baseline`` (DCR: as far from train as the ceiling).

    Each argument is one value or the per-fold values: the mean loss over folds is compared, so an AUC of
    0.2 in one fold and 0.8 in another counts as 0.3 from 0.5, not as 0.5.
    """
    if rule == ">= ceiling":
        return np.mean(model) >= np.mean(ceiling)
    return np.mean([axis_loss(rule, v) for v in np.atleast_1d(model)]) <= np.mean(
        [axis_loss(rule, v) for v in np.atleast_1d(baseline)])


def summarise(official: dict, folds: list[dict], times: dict) -> str:
    """The Markdown summary: values per generator, then the verdicts."""
    def stats(generator, key):
        values = np.array([f[generator][key] for f in folds], dtype=float)
        return values.mean(), values.std(ddof=1), values

    def sizes(run):
        return "/".join(str(run["settings"][k]) for k in ("n_train", "n_heldout", "n_generated"))

    def cell(generator, key):
        mean, sd, _ = stats(generator, key)
        return f"{mean:.3g} +- {sd:.2g} ({official[generator][key]:.3g})"

    lines = [
        "# digit69: trained pipeline vs PCA-Gaussian vs real-vs-real",
        "",
        f"Cells: mean +- sd over {len(folds)} CV folds (official split in brackets). Samples (train / held-out "
        f"reference / scored per generator): official {sizes(official)}, CV folds "
        + ", ".join(sizes(f) for f in folds) + ". Every generator is scored on as many samples as the ceiling "
        "half of the held-out trials holds. Verdicts compare the mean over folds of each axis' distance from ideal "
        "(|ratio - 1|, |AUC - 0.5|, the value itself for lower / higher is better).",
        "",
        "| axis | " + " | ".join(GENERATORS) + " | rule |",
        "|---|" + "---|" * len(GENERATORS) + "---|",
    ]
    for key, name, rule in AXES:
        lines.append(f"| {name} | " + " | ".join(cell(g, key) for g in GENERATORS) + f" | {rule} |")
    for key, name in EXTRA:
        lines.append(f"| {name} | " + " | ".join(cell(g, key) for g in GENERATORS) + " | (context) |")
    lines.append("| TSTR accuracy (6 vs 9) | " + " | ".join(cell(g, "tstr_accuracy") for g in GENERATORS)
                 + " | trained on each set, tested on the reference half |")
    trtr_mean, trtr_sd, _ = stats("reference", "trtr_accuracy")
    lines += [f"| TRTR accuracy (real train) | {trtr_mean:.3g} +- {trtr_sd:.2g} "
              f"({official['reference']['trtr_accuracy']:.3g}) | | | the real-data classifier |", ""]

    for baseline in BASELINES:
        lines += [f"## Verdicts: model at least as good as {baseline}", "",
                  "| axis | rule | CV means | folds where model is as good | official split |", "|---|---|---|---|---|"]
        all_pass = True
        for key, name, rule in AXES:
            m, p, c = (stats(g, key) for g in ("model", baseline, "real_vs_real"))
            ok = as_good(rule, m[2], p[2], c[2])
            wins = sum(as_good(rule, *vals) for vals in zip(m[2], p[2], c[2]))
            ok_official = as_good(rule, *(official[g][key] for g in ("model", baseline, "real_vs_real")))
            all_pass &= ok
            lines.append(f"| {name} | {rule} | {'PASS' if ok else 'FAIL'} | {wins}/{len(folds)} | "
                         f"{'PASS' if ok_official else 'FAIL'} |")
        lines += ["", f"- Every axis at once against {baseline} (CV means): {'PASS' if all_pass else 'FAIL'}", ""]
    dcr_model, dcr_ceiling = stats("model", "dcr_ratio")[0], stats("real_vs_real", "dcr_ratio")[0]
    lines += [f"- No memorisation (model DCR ratio {dcr_model:.3g}, needs >= real_vs_real's {dcr_ceiling:.3g}; "
              f"CV means): {'FAIL' if dcr_model < dcr_ceiling else 'PASS'}",
              f"- TSTR (model) {stats('model', 'tstr_accuracy')[0]:.3g} vs TRTR {trtr_mean:.3g} (CV means)", "",
              "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()), ""]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    config = main_job.load_sections(args.config)
    data = config["data"]
    mat = Path(data["data_path"])
    mat = mat if mat.is_absolute() else (ROOT / mat).resolve()
    if not mat.is_file():
        print(f"skipped: {mat} not found (the digit69 data lie beside the repository in ../shared/data)")
        return 0
    if args.quick:
        for section, overrides in QUICK.items():
            config[section] = {**config[section], **overrides}
    out = Path(args.out_dir)
    times = {}

    # (a) the official split, as configured
    official_config = {**config, "data": {**data, "data_path": str(mat)}}
    results, times["official"] = run_main(official_config, out / "official")
    official = fold_metrics(results)

    # (b) stratified k-fold over all 100 trials (fmriTrn + fmriTest), each fold's split written as an .npz
    fmri = load_fmri(str(mat), data_key=data["data_key"], label_key=data["label_key"])
    x, y = np.asarray(fmri.data), fmri.labels
    folds = []
    cv = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    with tempfile.TemporaryDirectory() as tmp:  # the folds' .npz copies of the data do not outlive the runs
        for i, (train_idx, test_idx) in enumerate(cv.split(x, y)):
            npz = Path(tmp) / f"fold{i}.npz"
            np.savez(npz, train=x[train_idx], test=x[test_idx], train_labels=y[train_idx], test_labels=y[test_idx])
            fold_data = {**data, "data_path": str(npz), "data_key": ["train", "test"],
                         "label_key": ["train_labels", "test_labels"], "split": "keys", "test_keys": ["test"]}
            fold_dir = out / "cv" / f"fold{i}"
            results, times[f"fold{i}"] = run_main({**config, "data": fold_data}, fold_dir)
            # Row indices into fmriTrn + fmriTest, to rebuild the fold's data.
            np.savez(fold_dir / "fold_indices.npz", train=train_idx, test=test_idx)
            folds.append(fold_metrics(results))
            print(f"fold {i}: {times[f'fold{i}']:.0f} s", flush=True)

    # (c) the table
    summary = summarise(official, folds, times)
    (out / "summary.md").write_text(summary)
    (out / "cv_metrics.json").write_text(json.dumps({"official": official, "folds": folds}, indent=2))
    print(summary)
    print(f"written: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
