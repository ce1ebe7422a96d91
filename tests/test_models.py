"""FMRIVAE and FMRIDenoiser: shapes, KL, voxel statistics, save/load, strict loading, learning."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from fmri_diffusers import FMRIVAE, FMRIDenoiser, GaussianPosterior

N_VOXELS, LATENT = 30, 6


def make_vae(**kw):
    torch.manual_seed(0)
    return FMRIVAE(n_voxels=N_VOXELS, latent_dim=LATENT, hidden_dims=[24, 12], **kw).eval()


def make_denoiser(**kw):
    torch.manual_seed(0)
    model = FMRIDenoiser(latent_dim=LATENT, hidden_dims=[16, 8], layers_per_block=1, time_embed_dim=16, **kw)
    # The output layer is zero-initialised; give it weights so outputs depend on the inputs.
    torch.nn.init.normal_(model.conv_out.weight, std=0.5)
    return model.eval()


def test_gaussian_posterior_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mean, logvar = torch.randn(5, 4), torch.randn(5, 4)
    post = GaussianPosterior(mean, logvar)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(4), torch.ones(4))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=1)
    torch.testing.assert_close(post.kl(), expected)
    assert post.kl().shape == (5,)


def test_posterior_sampling_is_reparameterised_and_reproducible():
    mean = torch.zeros(2000, 3, requires_grad=True)
    post = GaussianPosterior(mean, torch.full((2000, 3), 2 * torch.log(torch.tensor(2.0)).item()))
    z = post.sample(torch.Generator().manual_seed(1))
    torch.testing.assert_close(z, post.sample(torch.Generator().manual_seed(1)))
    assert abs(z.std().item() - 2.0) < 0.1  # std = exp(0.5 * logvar) = 2
    z.sum().backward()
    assert mean.grad is not None


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_vae_shapes_and_outputs(norm):
    vae = make_vae(norm=norm)
    x = torch.randn(7, N_VOXELS)
    post = vae.encode(x).latent_dist
    assert post.mean.shape == (7, LATENT)
    assert vae.decode(post.mode()).sample.shape == (7, N_VOXELS)
    out = vae(x, sample_posterior=False)
    torch.testing.assert_close(out.sample, vae.decode(post.mean).sample)
    dec, post2 = vae(x, return_dict=False)
    assert dec.shape == (7, N_VOXELS) and isinstance(post2, GaussianPosterior)


def test_normalize_denormalize_round_trip_and_masked_voxels():
    vae = make_vae()
    mean = torch.linspace(100, 200, N_VOXELS)
    std = torch.linspace(1, 5, N_VOXELS)
    mask = torch.ones(N_VOXELS)
    mask[3] = 0
    vae.set_voxel_statistics(mean, std, mask)
    x = mean + std * torch.randn(4, N_VOXELS)
    x[:, 3] = float("nan")  # masked-out voxels may hold NaN: they are ignored
    z = vae.normalize(x)
    assert torch.isfinite(z).all() and (z[:, 3] == 0).all()
    back = vae.denormalize(z)
    torch.testing.assert_close(back[:, [0, 1, 2, 4]], x[:, [0, 1, 2, 4]])
    torch.testing.assert_close(back[:, 3], mean[3].expand(4))  # filled with the training mean


def test_voxel_statistics_stay_fp32_under_half_and_bf16():
    vae = make_vae()
    mean = torch.full((N_VOXELS,), 1000.25)  # fp16 cannot hold 1000.25
    vae.set_voxel_statistics(mean, torch.ones(N_VOXELS))
    for dtype in (torch.float16, torch.bfloat16):
        cast = make_vae().to(dtype)
        cast.set_voxel_statistics(mean, torch.ones(N_VOXELS))
        assert cast.voxel_stats.mean.dtype == torch.float32
        assert cast.encoder[0].weight.dtype == dtype
        assert cast.voxel_stats.mean[0].item() == 1000.25


def test_set_voxel_statistics_rejects_bad_input():
    vae = make_vae()
    with pytest.raises(ValueError, match=r"voxel mean must have shape \(30,\), got \(29,\)"):
        vae.set_voxel_statistics(torch.zeros(29), torch.ones(30))
    with pytest.raises(ValueError, match="voxel std holds 1 non-finite"):
        vae.set_voxel_statistics(torch.zeros(30), torch.tensor([float("nan")] + [1.0] * 29))
    with pytest.raises(ValueError, match="std must be > 0 for every kept voxel"):
        vae.set_voxel_statistics(torch.zeros(30), torch.zeros(30))


def test_vae_rejects_wrong_shapes_and_config():
    vae = make_vae()
    with pytest.raises(ValueError, match=r"Expected x of shape \(n_samples, 30\), got \(30,\)"):
        vae.encode(torch.zeros(30))
    with pytest.raises(ValueError, match=r"Expected z of shape \(n_samples, 6\), got \(2, 5\)"):
        vae.decode(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="norm must be one of"):
        FMRIVAE(n_voxels=10, norm="group")
    with pytest.raises(ValueError, match="dropout must be in"):
        FMRIVAE(n_voxels=10, dropout=1.5)


@pytest.mark.parametrize("factory", [make_vae, lambda: make_denoiser(num_class_embeds=3, condition_dim=2)])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, factory):
    model = factory()
    if isinstance(model, FMRIVAE):
        model.set_voxel_statistics(torch.arange(N_VOXELS).float(), torch.ones(N_VOXELS) * 2)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert all(not v for v in info.values()), info
    loaded.eval()
    torch.manual_seed(1)
    if isinstance(model, FMRIVAE):
        x = torch.randn(3, N_VOXELS)
        torch.testing.assert_close(loaded(x, sample_posterior=False).sample, model(x, sample_posterior=False).sample)
        torch.testing.assert_close(loaded.voxel_stats.std, model.voxel_stats.std)
    else:
        args = (torch.randn(3, LATENT), torch.tensor([5, 50, 500]))
        kw = dict(class_labels=torch.tensor([0, 1, 2]), conditions=torch.randn(3, 2))
        torch.testing.assert_close(loaded(*args, **kw).sample, model(*args, **kw).sample)


def test_from_pretrained_fp16_keeps_voxel_statistics_fp32(tmp_path):
    vae = make_vae()
    vae.set_voxel_statistics(torch.full((N_VOXELS,), 1000.25), torch.ones(N_VOXELS))
    vae.save_pretrained(tmp_path)
    half = FMRIVAE.from_pretrained(tmp_path, dtype=torch.float16)
    assert half.encoder[0].weight.dtype == torch.float16
    assert half.voxel_stats.mean.dtype == torch.float32
    assert half.voxel_stats.mean[0].item() == 1000.25


def test_missing_tensor_or_wrong_class_raises(tmp_path):
    make_vae().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not match FMRIDenoiser: missing_keys"):
        FMRIDenoiser.from_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["to_voxels.bias"]
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"does not match FMRIVAE: missing_keys \(1\): to_voxels.bias"):
        FMRIVAE.from_pretrained(tmp_path)


def test_denoiser_conditioning_and_null_condition():
    model = make_denoiser(num_class_embeds=2, condition_dim=3)
    x, t = torch.randn(4, LATENT), torch.tensor(10)
    cond = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 0, 1])
    out_a = model(x, t, class_labels=labels, conditions=cond).sample
    out_b = model(x, t, class_labels=1 - labels, conditions=cond).sample
    assert out_a.shape == (4, LATENT)
    assert not torch.allclose(out_a, out_b)  # the label matters
    # Dropping the condition is the same as passing none: the learned null class and null vector.
    dropped = model(x, t, class_labels=labels, conditions=cond, drop_condition=torch.ones(4, dtype=torch.bool)).sample
    torch.testing.assert_close(dropped, model(x, t).sample)
    # A partial drop only changes the dropped rows.
    part = model(x, t, class_labels=labels, conditions=cond, drop_condition=torch.tensor([True, False, False, False]))
    torch.testing.assert_close(part.sample[1:], out_a[1:])
    torch.testing.assert_close(part.sample[:1], dropped[:1])


def test_denoiser_rejects_bad_conditioning():
    uncond = make_denoiser()
    with pytest.raises(ValueError, match="no class embedding"):
        uncond(torch.randn(2, LATENT), 1, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no condition projection"):
        uncond(torch.randn(2, LATENT), 1, conditions=torch.randn(2, 3))
    cond = make_denoiser(num_class_embeds=2, condition_dim=3)
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 2\), got values \[0, 2\]"):
        cond(torch.randn(2, LATENT), 1, class_labels=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"Expected conditions of shape \(2, 3\), got \(2, 4\)"):
        cond(torch.randn(2, LATENT), 1, conditions=torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"Expected sample of shape \(batch, 6\)"):
        cond(torch.randn(2, LATENT + 1), 1)


def test_vae_training_lowers_reconstruction_loss():
    torch.manual_seed(0)
    # Low-rank data: 3 latent factors mixed into 30 voxels, plus noise.
    data = torch.randn(256, 3) @ torch.randn(3, N_VOXELS) + 0.1 * torch.randn(256, N_VOXELS)
    vae = make_vae(dropout=0.0).train()
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)

    def loss_fn():
        out = vae(data)
        return torch.nn.functional.mse_loss(out.sample, data) + 1e-3 * out.latent_dist.kl().mean() / N_VOXELS

    with torch.no_grad():
        start = loss_fn().item()
    for _ in range(150):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * start, (start, loss.item())


def test_observation_noise_has_the_stored_std_and_spares_masked_voxels():
    vae = make_vae()
    mask = torch.ones(N_VOXELS)
    mask[0] = 0
    vae.set_voxel_statistics(torch.zeros(N_VOXELS), torch.ones(N_VOXELS), mask)
    std = torch.linspace(0.1, 2.0, N_VOXELS)
    vae.set_noise_std(std)
    assert vae.voxel_stats.noise_std[0] == 0  # masked-out voxels get no noise
    mean = torch.full((20000, N_VOXELS), 3.0)
    x = vae.sample_observation(mean, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.mean(0)[1:], mean[0, 1:], atol=0.05, rtol=0)
    torch.testing.assert_close(x.std(0)[1:], std[1:], rtol=0.03, atol=0)
    assert (x[:, 0] == 3.0).all()
    with pytest.raises(ValueError, match=r"noise_std must have shape \(30,\), got \(3,\)"):
        vae.set_noise_std(torch.ones(3))
    with pytest.raises(ValueError, match="noise_std must be finite and >= 0"):
        vae.set_noise_std(-torch.ones(N_VOXELS))
