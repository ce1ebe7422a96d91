"""FMRILatentDiffusionPipeline: sampling contract, schedulers, guidance, reconstruction, save/load, Hub."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

import fmri_diffusers.hub as hub
from fmri_diffusers import FMRIVAE, FMRIDenoiser, FMRILatentDiffusionPipeline
from fmri_diffusers.models.fmri_denoiser import FMRIDenoiserOutput

N_VOXELS, LATENT = 20, 4


def make_pipeline(num_class_embeds=None, prediction_type="epsilon", beta_schedule="linear"):
    torch.manual_seed(0)
    vae = FMRIVAE(n_voxels=N_VOXELS, latent_dim=LATENT, hidden_dims=[16], scaling_factor=0.7).eval()
    mask = torch.ones(N_VOXELS)
    mask[-1] = 0
    vae.set_voxel_statistics(torch.linspace(500, 600, N_VOXELS), torch.linspace(1, 3, N_VOXELS), mask)
    denoiser = FMRIDenoiser(latent_dim=LATENT, hidden_dims=[16, 8], layers_per_block=1, time_embed_dim=16,
                            num_class_embeds=num_class_embeds).eval()
    torch.nn.init.normal_(denoiser.conv_out.weight, std=0.3)  # zero-initialised output: make it depend on inputs
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule=beta_schedule, clip_sample=False,
                              prediction_type=prediction_type)
    pipe = FMRILatentDiffusionPipeline(vae=vae, denoiser=denoiser, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class GaussianOracle(FMRIDenoiser):
    """The exact denoiser for latents x0 ~ N(mu, s^2 I): E[eps | x_t] (or v, or x0) in closed form.

    With x_t = sqrt(a) x0 + sqrt(1 - a) eps, Var(x_t) = a s^2 + 1 - a and
    E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / Var(x_t). A scheduler that is used correctly must
    then turn noise into samples with mean mu and std s.
    """

    def set_target(self, mu, s, alphas_cumprod, prediction_type):
        self.mu, self.s, self.alphas_cumprod, self.prediction_type = mu, s, alphas_cumprod.double(), prediction_type

    def forward(self, sample, timestep, class_labels=None, conditions=None, drop_condition=None, return_dict=True):
        t = torch.as_tensor(timestep, dtype=torch.float64).clamp(0, len(self.alphas_cumprod) - 1)
        lo = t.floor().long()
        hi = torch.clamp(lo + 1, max=len(self.alphas_cumprod) - 1)
        a = torch.lerp(self.alphas_cumprod[lo], self.alphas_cumprod[hi], t - lo)  # Euler/Heun use float t
        x = sample.double()
        var = a * self.s**2 + 1 - a
        eps = (1 - a).sqrt() * (x - a.sqrt() * self.mu) / var
        x0 = self.mu + a.sqrt() * self.s**2 * (x - a.sqrt() * self.mu) / var
        out = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[self.prediction_type]
        return FMRIDenoiserOutput(sample=out.to(sample.dtype))


# Steps at which each scheduler is accurate on the schedule train_ldm.py saves (1000 cosine steps, trailing
# spacing). Heun is not at 10 or 25 steps: its first step from sigma_max ~ 2e4 overshoots (std x15 at 10).
SCHEDULERS = [
    (DDPMScheduler, 100),
    (DDIMScheduler, 50),
    (DPMSolverMultistepScheduler, 10),
    (UniPCMultistepScheduler, 10),
    (EulerDiscreteScheduler, 50),
    (HeunDiscreteScheduler, 50),
]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("scheduler_cls,steps", SCHEDULERS, ids=[c.__name__ for c, _ in SCHEDULERS])
def test_every_scheduler_samples_the_right_distribution(scheduler_cls, steps, prediction_type):
    pipe = make_pipeline(prediction_type=prediction_type, beta_schedule="squaredcos_cap_v2")
    config = {**pipe.scheduler.config, "num_train_timesteps": 1000, "timestep_spacing": "trailing"}
    oracle = GaussianOracle(latent_dim=LATENT, hidden_dims=[8], layers_per_block=1, time_embed_dim=8)
    oracle.set_target(1.0, 0.5, DDPMScheduler.from_config(config).alphas_cumprod, prediction_type)
    pipe = FMRILatentDiffusionPipeline(vae=pipe.vae, denoiser=oracle, scheduler=scheduler_cls.from_config(config))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.clip_sample is False or not hasattr(pipe.scheduler.config, "clip_sample")
    latents = pipe(batch_size=4000, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                   output_type="latent").samples
    assert latents.shape == (4000, LATENT)
    assert abs(latents.mean().item() - 1.0) < 0.05
    assert abs(latents.std().item() - 0.5) < 0.05


def test_output_types_shapes_and_units():
    pipe = make_pipeline()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    out_np = pipe(batch_size=3, num_inference_steps=4, generator=g()).samples
    assert isinstance(out_np, np.ndarray) and out_np.shape == (3, N_VOXELS) and out_np.dtype == np.float32
    out_pt = pipe(batch_size=3, num_inference_steps=4, generator=g(), output_type="pt").samples
    np.testing.assert_allclose(out_pt.numpy(), out_np)
    latents = pipe(batch_size=3, num_inference_steps=4, generator=g(), output_type="latent").samples
    assert latents.shape == (3, LATENT)
    # Decoding by hand: latents / scaling_factor -> decode -> denormalize gives the same samples.
    with torch.no_grad():
        manual = pipe.vae.denormalize(pipe.vae.decode(latents / 0.7).sample)
    np.testing.assert_allclose(manual.numpy(), out_np, rtol=1e-6)
    # Masked-out voxel comes back as its training mean, in the data's units.
    np.testing.assert_allclose(out_np[:, -1], 600.0)
    (tuple_out,) = pipe(batch_size=3, num_inference_steps=4, generator=g(), return_dict=False)
    np.testing.assert_array_equal(tuple_out, out_np)


def test_observation_noise_adds_the_vae_residual_noise_in_data_units():
    pipe = make_pipeline()
    noise_std = torch.linspace(0.5, 1.0, N_VOXELS)
    pipe.vae.set_noise_std(noise_std)
    latents = torch.randn(1, LATENT, generator=torch.Generator().manual_seed(0)).expand(4000, LATENT)
    kw = dict(batch_size=4000, num_inference_steps=2, latents=latents)
    smooth = pipe(generator=torch.Generator().manual_seed(1), observation_noise=False, **kw).samples
    noisy = pipe(generator=torch.Generator().manual_seed(1), **kw).samples  # observation_noise=True by default
    residual = noisy - smooth
    # DDPM's own step noise is shared (same generator stream) until the decode; what differs is p(x | z).
    voxel_std = np.linspace(1, 3, N_VOXELS)  # the pipeline's voxel std (make_pipeline)
    expected = noise_std.numpy() * voxel_std
    expected[-1] = 0.0  # masked-out voxel
    np.testing.assert_allclose(residual.std(0), expected, rtol=0.05, atol=1e-6)


def test_generator_reproducibility_and_per_sample_generators():
    pipe = make_pipeline()
    a = pipe(batch_size=3, num_inference_steps=5, generator=torch.Generator().manual_seed(7)).samples
    b = pipe(batch_size=3, num_inference_steps=5, generator=torch.Generator().manual_seed(7)).samples
    np.testing.assert_array_equal(a, b)
    batch = pipe(batch_size=3, num_inference_steps=5,
                 generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)]).samples
    alone = pipe(batch_size=1, num_inference_steps=5, generator=[torch.Generator().manual_seed(2)]).samples
    np.testing.assert_allclose(batch[1:2], alone, rtol=1e-5, atol=1e-4)


def test_classifier_free_guidance_matches_the_formula():
    pipe = make_pipeline(num_class_embeds=2)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # deterministic: one step to check by hand
    latents = torch.randn(4, LATENT, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1, 0])
    out = pipe(batch_size=4, num_inference_steps=1, latents=latents, class_labels=labels, guidance_scale=3.0,
               output_type="latent").samples
    pipe.scheduler.set_timesteps(1)
    t = pipe.scheduler.timesteps[0]
    eps_c = pipe.denoiser(latents, t, class_labels=labels).sample
    eps_u = pipe.denoiser(latents, t).sample
    expected = pipe.scheduler.step(eps_u + 3.0 * (eps_c - eps_u), t, latents).prev_sample
    torch.testing.assert_close(out, expected)
    # guidance_scale=1 is the plain conditional model; a scalar label broadcasts to the batch.
    plain = pipe(batch_size=4, num_inference_steps=1, latents=latents, class_labels=1, output_type="latent").samples
    expected = pipe.scheduler.step(pipe.denoiser(latents, t, class_labels=torch.ones(4, dtype=torch.long)).sample,
                                   t, latents).prev_sample
    torch.testing.assert_close(plain, expected)


def test_reconstruct_strength_zero_is_the_vae_round_trip():
    pipe = make_pipeline()
    x = np.random.default_rng(0).normal(550, 2, size=(5, N_VOXELS)).astype(np.float32)
    rec = pipe.reconstruct(x).samples
    vae = pipe.vae
    with torch.no_grad():
        expected = vae.denormalize(vae.decode(vae.encode(vae.normalize(torch.from_numpy(x))).latent_dist.mean).sample)
    np.testing.assert_allclose(rec, expected.numpy(), rtol=1e-6)


def test_reconstruct_with_strength_runs_that_fraction_of_the_schedule():
    pipe = make_pipeline()
    calls = []
    pipe.denoiser.register_forward_hook(lambda *args: calls.append(1))
    x = np.random.default_rng(0).normal(550, 2, size=(2, N_VOXELS)).astype(np.float32)
    out = pipe.reconstruct(x, strength=0.5, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 5 and out.samples.shape == (2, N_VOXELS)
    again = pipe.reconstruct(x, strength=0.5, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(out.samples, again.samples)
    # The Euler family needs set_begin_index before add_noise; it must work too.
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert np.isfinite(pipe.reconstruct(x, strength=0.3, num_inference_steps=10).samples).all()


def test_callback_on_step_end_can_replace_latents():
    pipe = make_pipeline()
    seen = []

    def callback(p, i, t, kwargs):
        seen.append(i)
        return {"latents": torch.zeros_like(kwargs["latents"])}

    out = pipe(batch_size=2, num_inference_steps=3, callback_on_step_end=callback, output_type="latent").samples
    assert seen == [0, 1, 2]
    assert torch.count_nonzero(out) == 0


def test_save_load_round_trip_gives_identical_samples(tmp_path):
    pipe = make_pipeline(num_class_embeds=3)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["vae"] == ["fmri_diffusers.models.fmri_vae", "FMRIVAE"]
    assert index["denoiser"] == ["fmri_diffusers.models.fmri_denoiser", "FMRIDenoiser"]
    assert not list(tmp_path.rglob("*.bin")) and len(list(tmp_path.rglob("*.safetensors"))) == 2
    loaded = FMRILatentDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    kw = dict(batch_size=4, num_inference_steps=6, class_labels=[0, 1, 2, 0], guidance_scale=2.0)
    a = pipe(generator=torch.Generator().manual_seed(0), **kw).samples
    b = loaded(generator=torch.Generator().manual_seed(0), **kw).samples
    np.testing.assert_array_equal(a, b)


def test_load_in_bf16_keeps_statistics_fp32_and_samples(tmp_path):
    make_pipeline().save_pretrained(tmp_path)
    pipe = FMRILatentDiffusionPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.denoiser.dtype == torch.bfloat16 and pipe.vae.voxel_stats.mean.dtype == torch.float32
    ref = FMRILatentDiffusionPipeline.from_pretrained(tmp_path)
    ref.set_progress_bar_config(disable=True)
    kw = dict(batch_size=8, num_inference_steps=5)
    low = pipe(generator=torch.Generator().manual_seed(0), **kw).samples
    full = ref(generator=torch.Generator().manual_seed(0), **kw).samples
    assert low.dtype == np.float32
    np.testing.assert_allclose(low, full, atol=0.5)  # bf16 weights; the means (500-600) stay exact


def test_from_pretrained_resolves_hub_ids_through_snapshot_download(tmp_path, monkeypatch):
    make_pipeline().save_pretrained(tmp_path)
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    pipe = FMRILatentDiffusionPipeline.from_pretrained("someone/fmri-ldm", revision="main")
    assert calls == [("someone/fmri-ldm", {"revision": "main"})]
    assert isinstance(pipe.vae, FMRIVAE)


def test_from_pretrained_rejects_what_is_not_a_pipeline(tmp_path):
    with pytest.raises(ValueError, match="is not a pipeline folder: it has no model_index.json"):
        FMRILatentDiffusionPipeline.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither an existing folder nor a Hub repo id"):
        FMRILatentDiffusionPipeline.from_pretrained(str(tmp_path / "missing" / "deep" / "folder"))


def test_push_to_hub_uploads_pipeline_and_card_without_local_paths(tmp_path, monkeypatch):
    pipe = make_pipeline()
    pipe.save_pretrained(tmp_path / "saved")
    pipe = FMRILatentDiffusionPipeline.from_pretrained(tmp_path / "saved")  # records _name_or_path
    uploaded = {}

    class Repo:
        repo_id = "me/fmri-ldm"

    def fake_upload_folder(repo_id, folder_path, **kwargs):
        from pathlib import Path

        files = {str(p.relative_to(folder_path)): p.read_text() if p.suffix in (".json", ".md") else None
                 for p in Path(folder_path).rglob("*") if p.is_file()}
        uploaded.update(repo_id=repo_id, files=files, kwargs=kwargs)
        return "https://hub/commit/1"

    monkeypatch.setattr(hub, "create_repo", lambda repo_id, **kw: Repo())
    monkeypatch.setattr(hub, "upload_folder", fake_upload_folder)
    url = pipe.push_to_hub("me/fmri-ldm", model_card_kwargs={"training_data": "digit69", "metrics": {"fd": 1.5}})
    assert url == "https://hub/commit/1" and uploaded["repo_id"] == "me/fmri-ldm"
    files = uploaded["files"]
    assert {"model_index.json", "README.md", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"} <= set(files)
    assert "_name_or_path" not in files["vae/config.json"]
    card = files["README.md"]
    assert "library_name: diffusers" in card and "digit69" in card and "| fd | 1.5 |" in card
    assert "fmri" in card and str(tmp_path) not in card


def test_push_folder_leaves_training_state_behind(tmp_path, monkeypatch):
    make_pipeline().save_pretrained(tmp_path)
    for name in ("checkpoint-5/optimizer.bin", "checkpoint-5/random_states_0.pkl", "logs/train.log", "train.log"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    uploaded = []

    class Repo:
        repo_id = "me/fmri-ldm"

    monkeypatch.setattr(hub, "create_repo", lambda repo_id, **kw: Repo())
    monkeypatch.setattr(hub, "upload_folder", lambda repo_id, folder_path, **kw: uploaded.extend(
        str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()))
    hub.push_folder_to_hub(tmp_path, "me/fmri-ldm")
    assert "model_index.json" in uploaded and "denoiser/diffusion_pytorch_model.safetensors" in uploaded
    assert not [f for f in uploaded if f.startswith(("checkpoint-", "logs")) or f.endswith((".log", ".bin", ".pkl"))]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
        (dict(num_inference_steps=0), "num_inference_steps must be an integer >= 1, got 0"),
        (dict(output_type="pil"), "output_type must be one of"),
        (dict(class_labels=[0, 1]), r"class_labels were given, but the denoiser is unconditional"),
        (dict(guidance_scale=2.0), "guidance_scale=2.0 needs a condition"),
        (dict(latents=torch.zeros(2, 3)), r"latents must have shape \(1, 4\), got \(2, 3\)"),
        (dict(batch_size=2, generator=[torch.Generator()]), "list of 1 generators for batch_size=2"),
    ],
)
def test_call_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_pipeline()(**kwargs)


def test_conditional_call_rejects_labels_out_of_range():
    pipe = make_pipeline(num_class_embeds=2)
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 2\), got \[0, 5\]"):
        pipe(batch_size=2, class_labels=[0, 5])
    with pytest.raises(ValueError, match=r"class_labels must be a scalar or have shape \(3,\), got \(2,\)"):
        pipe(batch_size=3, class_labels=[0, 1])


@pytest.mark.parametrize(
    "samples,kwargs,match",
    [
        (np.zeros((2, N_VOXELS)), dict(strength=1.5), r"strength must be a number in \[0, 1\], got 1.5"),
        (np.zeros(N_VOXELS), {}, r"Expected samples of shape \(n_samples, 20\), got \(20,\)"),
        (np.full((2, N_VOXELS), np.nan), {}, r"samples contain 38 NaN/Inf values in kept voxels"),
        ([[0.0] * N_VOXELS], {}, "samples must be a numpy array or torch tensor, got list"),
        (np.zeros((2, N_VOXELS)), dict(strength=0.01, num_inference_steps=10), "runs no step"),
    ],
)
def test_reconstruct_rejects_bad_input(samples, kwargs, match):
    exc = TypeError if isinstance(samples, list) else ValueError
    with pytest.raises(exc, match=match):
        make_pipeline().reconstruct(samples, **kwargs)


def test_pipeline_with_a_missing_tensor_fails_to_load(tmp_path):
    from safetensors.torch import load_file, save_file

    make_pipeline().save_pretrained(tmp_path)
    weights = tmp_path / "denoiser" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["conv_out.weight"]
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"does not match FMRIDenoiser: missing_keys \(1\): conv_out.weight"):
        FMRILatentDiffusionPipeline.from_pretrained(tmp_path)
