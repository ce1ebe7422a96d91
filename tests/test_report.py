"""Tests for fmri_diffusers.report: side-by-side scoring, the ceiling, and the written report."""

import json

import numpy as np
import pytest

from fmri_diffusers import metrics
from fmri_diffusers.baselines import PCAGaussian, PCAReconstruction, split_heldout
from fmri_diffusers.report import (
    HEADLINE_METRICS,
    evaluate_generated,
    evaluate_reconstructions,
    format_headline_table,
    format_verdict,
    judge,
    write_report,
)


@pytest.fixture
def gaussian_data(rng):
    """Correlated Gaussian 'fMRI': 300 train and 40 held-out samples of 30 voxels."""
    mixing = rng.normal(size=(30, 30)) / np.sqrt(30)
    draw = lambda n: rng.normal(size=(n, 30)) @ mixing + 1.0  # noqa: E731
    return draw(300), draw(40), mixing


def test_shrunk_gaussian_wins_fd_vs_few_heldout_but_dispersion_exposes_it(rng, gaussian_data):
    train, _, mixing = gaussian_data
    heldout = rng.normal(size=(10, 30)) @ mixing + 1.0  # fewer samples than PCA dimensions
    mean, cov = train.mean(0), np.cov(train, rowvar=False)
    fitted = rng.multivariate_normal(mean, cov, size=400)
    shrunk = rng.multivariate_normal(mean, 0.6 * cov, size=400)
    results = evaluate_generated(train, heldout, {"fitted": fitted, "shrunk": shrunk}, n_pca=20, n_boot=0)
    fitted_s, shrunk_s = results["generators"]["fitted"], results["generators"]["shrunk"]
    # The effect: against 10 held-out samples (rank-9 covariance in 20-D) the shrunk Gaussian wins.
    assert shrunk_s["fd_heldout"]["value"] < fitted_s["fd_heldout"]["value"]
    # The report exposes it: dispersion ratio 0.6 vs 1, and FD against train is not fooled.
    assert fitted_s["dispersion_ratio"]["value"] == pytest.approx(1.0, abs=0.12)
    assert shrunk_s["dispersion_ratio"]["value"] == pytest.approx(0.6, abs=0.08)
    assert fitted_s["fd_train"]["value"] < shrunk_s["fd_train"]["value"]


def test_ceiling_copies_and_baseline_side_by_side(rng, gaussian_data):
    train, heldout, _ = gaussian_data
    reference, ceiling = split_heldout(heldout, seed=0)
    generated = {
        "copies": train[:20] + 1e-3 * rng.normal(size=(20, 30)),
        "pca_gaussian": PCAGaussian(10).fit(train).sample(50, seed=1),
        "real_vs_real": ceiling,
    }
    results = evaluate_generated(train, reference, generated, n_pca=10, n_boot=20)
    s = results["settings"]
    assert (s["n_generated"], s["n_heldout"], s["n_pca"], s["knn_k"]) == (20, 20, 10, 5)
    real, copies = results["generators"]["real_vs_real"], results["generators"]["copies"]
    assert real["dcr_ratio"]["value"] == pytest.approx(1.0, abs=0.3)
    assert real["share_closer_than_heldout"]["value"] < 0.2
    assert copies["share_closer_than_heldout"]["value"] == 1.0
    assert copies["dcr_ratio"]["value"] < 0.01
    low, high = real["dispersion_ratio"]["ci"]
    assert low <= real["dispersion_ratio"]["value"] <= high
    assert real["fd_heldout"]["ci"][0] < real["fd_heldout"]["ci"][1]
    assert real["mmd"]["ci"] is None  # kernel metrics carry no bootstrap CI
    # Values are the metric functions' on the same inputs.
    assert real["ks_mean"]["value"] == pytest.approx(metrics.ks_statistic(reference, ceiling).mean())
    json.dumps(results, allow_nan=False)  # JSON-serialisable as is


def test_tstr_and_trtr_with_labels(rng):
    def draw(n):
        y = np.repeat([1, 2], n // 2)
        return rng.normal(size=(n, 20)) + 1.5 * (y == 2)[:, None] * np.linspace(0, 1, 20), y

    (train, train_y), (heldout, heldout_y) = draw(120), draw(30)
    model = PCAGaussian(8).fit(train, labels=train_y)
    gen_y = np.repeat([1, 2], 40)
    labels = {"train_y": train_y, "heldout_y": heldout_y,
              "generated_y": {"pca_gaussian": gen_y, "unconditional": np.repeat([1, 2], 40)}}
    generated = {"pca_gaussian": model.sample(80, seed=0, labels=gen_y),
                 "unconditional": model.sample(80, seed=1)}
    results = evaluate_generated(train, heldout, generated, labels=labels, n_pca=8, n_boot=0)
    assert results["reference"]["trtr_accuracy"] > 0.8
    assert results["generators"]["pca_gaussian"]["tstr_accuracy"]["value"] > 0.8
    # Labels unrelated to the samples teach nothing: near chance.
    assert results["generators"]["unconditional"]["tstr_accuracy"]["value"] < 0.75
    with pytest.raises(ValueError, match=r"labels lacks keys \['generated_y'\]"):
        evaluate_generated(train, heldout, generated, labels={"train_y": train_y, "heldout_y": heldout_y})


def test_evaluate_generated_rejects_bad_inputs(gaussian_data):
    train, heldout, _ = gaussian_data
    bad = heldout.copy()
    bad[0, :3] = np.nan
    with pytest.raises(ValueError, match="model contains 3 NaN"):
        evaluate_generated(train, heldout, {"model": bad})
    with pytest.raises(ValueError, match="model has 29 voxels, train has 30"):
        evaluate_generated(train, heldout, {"model": heldout[:, :-1]})


def test_evaluate_reconstructions(rng, gaussian_data):
    train, heldout, _ = gaussian_data
    recons = {"pca": PCAReconstruction(5).fit(train).reconstruct(heldout),
              "noise": heldout + rng.normal(size=heldout.shape)}
    recons["pca"][:, 0] = 1.0  # a constant voxel: undefined r, counted
    results = evaluate_reconstructions(heldout, recons, n_boot=30)
    pca, noise = results["methods"]["pca"], results["methods"]["noise"]
    assert pca["mse"]["value"] == pytest.approx(metrics.mse(heldout, recons["pca"]))
    assert pca["r2"]["value"] == pytest.approx(metrics.r2_score(heldout, recons["pca"]))
    assert pca["voxelwise_r_undefined"] == 1 and noise["voxelwise_r_undefined"] == 0
    vox = metrics.voxelwise_r(heldout, recons["pca"])
    assert pca["voxelwise_r_mean"]["value"] == pytest.approx(np.nanmean(vox))
    low, high = noise["snr_db"]["ci"]
    assert low <= noise["snr_db"]["value"] <= high
    json.dumps(results, allow_nan=False)


def test_write_report(tmp_path, rng, gaussian_data):
    train, heldout, _ = gaussian_data
    reference, ceiling = split_heldout(heldout)
    results = {
        "generation": evaluate_generated(
            train, reference,
            {"real_vs_real": ceiling, "model": PCAGaussian(5).fit(train).sample(30)},
            n_pca=5, n_boot=10),
        "reconstruction": evaluate_reconstructions(
            heldout, {"pca": PCAReconstruction(5).fit(train).reconstruct(heldout)}, n_boot=10),
        "run": {"snr_of_perfect": float("inf")},
    }
    figure = tmp_path / "figs" / "values.png"
    figure.parent.mkdir()
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    report = write_report(results, tmp_path / "out", figures={"value distributions": figure})
    text = report.read_text()
    table = format_headline_table(results)
    # The headline table comes first, with the ceiling as its last column.
    assert text.index(table) < text.index("## Reconstruction") < text.index("## Figures")
    assert table.splitlines()[0] == "| metric | model | real_vs_real | how to read |"
    assert len(table.splitlines()) == 2 + len([k for k, *_ in HEADLINE_METRICS if k != "tstr_accuracy"])
    assert "](../figs/values.png)" in text
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["run"]["snr_of_perfect"] is None  # strict JSON: no Infinity
    assert saved["generation"]["generators"]["model"]["fd_heldout"]["value"] == pytest.approx(
        results["generation"]["generators"]["model"]["fd_heldout"]["value"])
    with pytest.raises(ValueError, match="figure 'missing' not found"):
        write_report(results, tmp_path / "out", figures={"missing": tmp_path / "nope.png"})


def test_real_data_pca_baselines(digit69_path):
    import scipy.io

    mat = scipy.io.loadmat(digit69_path)
    train, test = mat["fmriTrn"].astype(np.float32), mat["fmriTest"].astype(np.float32)
    train_y, test_y = mat["labelTrn"].ravel(), mat["labelTest"].ravel()
    reference, ceiling, ref_y, ceil_y = split_heldout(test, seed=0, labels=test_y)
    model = PCAGaussian(16).fit(train, labels=train_y)
    gen_y = np.tile(np.unique(train_y), 100)
    generated = {"pca_gaussian": model.sample(gen_y.size, seed=0, labels=gen_y), "real_vs_real": ceiling}
    labels = {"train_y": train_y, "heldout_y": ref_y,
              "generated_y": {"pca_gaussian": gen_y, "real_vs_real": ceil_y}}
    results = evaluate_generated(train, reference, generated, labels=labels, n_pca=16, n_boot=20,
                                 equalise_n=False)
    assert results["settings"]["n_generated"] is None
    pca_gauss = results["generators"]["pca_gaussian"]
    # Samples live in the 16-D PCA subspace: their spread is the variance those components keep.
    kept = model.pca_.explained_variance_ratio_.sum()
    assert pca_gauss["dispersion_ratio"]["value"] == pytest.approx(kept, abs=0.05)
    recon = evaluate_reconstructions(test, {"pca": PCAReconstruction(16).fit(train).reconstruct(test)}, n_boot=0)
    assert 0.0 < recon["methods"]["pca"]["samplewise_r_mean"]["value"] < 1.0


def test_larger_sets_are_scored_on_equal_size_subsets_with_a_range(rng, gaussian_data):
    train, heldout, _ = gaussian_data
    reference, ceiling = split_heldout(heldout, seed=0)
    big = PCAGaussian(10).fit(train).sample(200, seed=1)
    results = evaluate_generated(train, reference, {"model": big, "real_vs_real": ceiling}, n_pca=10,
                                 n_boot=20, n_subsets=8)
    assert results["settings"]["n_subsets"] == 8 and results["settings"]["n_generated"] == len(ceiling)
    model, real = results["generators"]["model"], results["generators"]["real_vs_real"]
    for key, entry in model.items():  # every metric of a subsampled set has its 2.5-97.5% range
        low, high = entry["ci"]
        assert low <= entry["value"] <= high, key
    assert real["mmd"]["ci"] is None and real["dispersion_ratio"]["ci"] is not None
    # The mean over subsets is steadier than one subset: two seeds agree more closely.
    one = [evaluate_generated(train, reference, {"model": big, "real_vs_real": ceiling}, n_pca=10, n_boot=0,
                              n_subsets=1, seed=s)["generators"]["model"]["dispersion_ratio"]["value"] for s in range(6)]
    many = [evaluate_generated(train, reference, {"model": big, "real_vs_real": ceiling}, n_pca=10, n_boot=0,
                               n_subsets=20, seed=s)["generators"]["model"]["dispersion_ratio"]["value"] for s in range(6)]
    assert np.std(many) < np.std(one)


def test_judge_applies_each_axis_rule():
    def gen(**values):
        return {k: {"value": v, "ci": None} for k, v in values.items()}

    base = dict(dispersion_ratio=0.8, fd_train=2.0, ks_mean=0.3, c2st_auc=0.7, precision=0.6, recall=0.6,
                dcr_ratio=0.9)
    generation = {"generators": {
        "model": gen(**{**base, "dispersion_ratio": 1.1, "fd_train": 3.0, "c2st_auc": 0.4, "dcr_ratio": 0.95}),
        "pca_gaussian": gen(**base),
        "real_vs_real": gen(**{**base, "dcr_ratio": 1.0}),
    }}
    verdict = {r["key"]: r["ok"] for r in judge(generation)}
    assert verdict == {"dispersion_ratio": True,  # |1.1 - 1| < |0.8 - 1|
                       "fd_train": False,  # 3 > 2
                       "ks_mean": True, "precision": True, "recall": True,  # ties count as good
                       "c2st_auc": True,  # |0.4 - 0.5| < |0.7 - 0.5|
                       "dcr_ratio": False}  # 0.95 < the ceiling's 1.0
    text = format_verdict({"generation": generation})
    assert "All axes at once: **no** (FD vs train, DCR ratio (memorisation))" in text
