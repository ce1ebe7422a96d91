#!/usr/bin/env python
"""Train an :class:`~fmri_diffusers.FMRIDenoiser` on the latents of a trained (frozen) fMRI VAE.

    accelerate launch train_ldm.py --pretrained_vae_model_name_or_path outputs/vae --output_dir outputs/ldm
    python train_ldm.py --config configs/ldm_tiny.yaml

``--pretrained_vae_model_name_or_path`` takes a ``train_vae.py`` output folder (its ``vae/``, the
best VAE, is used), a folder holding the VAE at its root, a pipeline folder, or a Hub repo id. Without
``--data_path``, the data settings come from that run's ``data_config.json`` (data flags given here
still win), so the LDM trains on the VAE's training split; with ``--data_path``, unset data flags take
their defaults.

The training set is encoded ONCE: the posterior mean and std of every training sample are kept in
memory (n_train, latent_dim), and each step draws fresh latents z = (mu + sigma * eps) * scaling_factor,
as encoding through the VAE each step would, at a fraction of the cost (see
benchmarks/bench_training.py). The denoiser learns the DDPM objective with an epsilon, v or x0
target, optionally min-SNR weighted (Hang et al. 2023), optionally conditioned on labels or subjects
with condition dropout for classifier-free guidance.

Output folder (``--output_dir``): a complete pipeline, ``FMRILatentDiffusionPipeline.from_pretrained(output_dir)``::

    model_index.json, vae/, denoiser/ (EMA weights with --use_ema), scheduler/ (DDPM)
    data_config.json   data / split flags, split sizes, "conditioning" and "classes" (class index i of
                       the denoiser = classes[i]); splits.npz, space/
    train_log.jsonl    {"step", "name", "value"}: train/loss, lr, val/loss (unweighted MSE, fixed noise)
    metrics.json       final validation loss, throughput
    checkpoint-<step>/ accelerate training state (EMA included) for --resume_from_checkpoint
    logs/              train.log and the tracker's files
"""

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fmri_diffusers.config import parse_args_with_config
from fmri_diffusers.data import VectorDataset
from fmri_diffusers.hub import create_model_card, push_folder_to_hub, resolve_pretrained_path
from fmri_diffusers.models.fmri_denoiser import FMRIDenoiser
from fmri_diffusers.models.fmri_vae import FMRIVAE
from fmri_diffusers.pipeline_fmri_ldm import FMRILatentDiffusionPipeline
from fmri_diffusers.training import (
    DATA_CONFIG,
    TRAIN_LOG,
    MetricLog,
    add_data_args,
    add_run_args,
    build_accelerator,
    check_output_dir,
    check_positive,
    epoch_batches,
    find_checkpoint,
    load_checkpoint,
    load_data,
    prepare_output_dir,
    replace_dir,
    resolve_data_args,
    save_checkpoint,
    save_data_config,
    setup_console_logging,
    steps_per_epoch,
    total_train_steps,
    tracker_config,
)

logger = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The script's flags (main.py maps its YAML sections onto them)."""
    parser = argparse.ArgumentParser(description="Train a latent diffusion model on fMRI VAE latents.",
                                     allow_abbrev=False)
    add_run_args(parser, default_output_dir="outputs/ldm")
    add_data_args(parser)
    g = parser.add_argument_group("diffusion")
    g.add_argument("--pretrained_vae_model_name_or_path", type=str, required=True,
                   help="train_vae.py output folder, VAE folder, pipeline folder or Hub repo id.")
    g.add_argument("--ddpm_num_steps", type=int, default=1000, help="Diffusion steps of the training noise schedule.")
    g.add_argument("--ddpm_beta_schedule", type=str, default="linear", choices=["linear", "squaredcos_cap_v2"],
                   help="Noise schedule: linear or cosine (squaredcos_cap_v2).")
    g.add_argument("--prediction_type", type=str, default="epsilon", choices=["epsilon", "v_prediction", "sample"],
                   help="What the denoiser predicts: noise, velocity or the clean latent.")
    g.add_argument("--snr_gamma", type=float, default=None,
                   help="Min-SNR weighting gamma (5.0 is usual); off if unset.")
    g.add_argument("--denoiser_hidden_dims", type=int, nargs="+", default=[512, 256],
                   help="Widths of the denoiser's down path (the up path mirrors it).")
    g.add_argument("--layers_per_block", type=int, default=2, help="Residual blocks per width.")
    g.add_argument("--time_embed_dim", type=int, default=256, help="Width of the timestep / condition embedding.")
    g.add_argument("--denoiser_dropout", type=float, default=0.0, help="Dropout inside the denoiser's residual blocks.")
    g.add_argument("--conditioning", type=str, default="none", choices=["none", "label", "subject"],
                   help="Condition the denoiser on the data's labels or subjects (classifier-free guidance at sampling).")
    g.add_argument("--condition_dropout", type=float, default=0.1,
                   help="Probability of training a sample unconditionally (classifier-free guidance).")
    g.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=False,
                   help="Keep an exponential moving average of the denoiser's weights and save it.")
    g.add_argument("--ema_decay", type=float, default=0.9999, help="Maximum EMA decay.")
    g.add_argument("--ema_inv_gamma", type=float, default=1.0,
                   help="EMA warm-up: decay = 1 - (1 + step / inv_gamma) ** -power.")
    g.add_argument("--ema_power", type=float, default=3 / 4, help="EMA warm-up power (see --ema_inv_gamma).")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags from ``argv`` (default ``sys.argv[1:]``), with ``--config run.yaml`` supplying unset ones."""
    return parse_args_with_config(build_parser(), argv)


def load_vae(name_or_path: str) -> tuple[FMRIVAE, Path]:
    """The frozen VAE and the folder it came from (a train_vae.py run folder has its data_config.json).

    Raises
    ------
    ValueError
        If nothing is found there, or the folder holds another model class, or weights are missing.
    """
    try:
        folder = Path(resolve_pretrained_path(name_or_path))
    except (OSError, ValueError) as err:  # hub errors offline / not found are OSErrors
        raise ValueError(f"--pretrained_vae_model_name_or_path {name_or_path}: not a folder or a reachable "
                         f"Hub repo ({err})") from None
    vae_dir = folder / "vae" if (folder / "vae" / "config.json").is_file() else folder
    config_file = vae_dir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"--pretrained_vae_model_name_or_path {name_or_path}: no VAE config.json in {folder} "
                         f"or {folder / 'vae'}; expected a train_vae.py output folder")
    class_name = json.loads(config_file.read_text()).get("_class_name")
    if class_name != FMRIVAE.__name__:
        raise ValueError(f"--pretrained_vae_model_name_or_path {name_or_path}: {config_file} describes a "
                         f"{class_name!r}, expected an 'FMRIVAE'")
    vae, info = FMRIVAE.from_pretrained(vae_dir, output_loading_info=True)
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(f"{vae_dir}: the weights do not match the config (missing {info['missing_keys']}, "
                         f"mismatched {info['mismatched_keys']})")
    return vae.requires_grad_(False).eval(), folder


@torch.no_grad()
def encode_posteriors(vae: FMRIVAE, data, indices, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and stds, each (len(indices), latent_dim) fp32 on ``device``, of ``data[indices]``.

    The VAE stays fp32: it runs once, and its latents are the targets of the whole training run.
    """
    loader = DataLoader(VectorDataset(data, indices), batch_size=batch_size, collate_fn=VectorDataset.collate,
                        generator=torch.Generator())  # leaves the global RNG alone
    empty = torch.zeros(0, vae.config.latent_dim, device=device)  # an empty split (e.g. --val_fraction 0)
    means, stds = [empty], [empty]
    for batch in loader:
        posterior = vae.encode(vae.normalize(batch.to(device))).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)


def diffusion_loss(denoiser, scheduler: DDPMScheduler, latents: torch.Tensor, class_labels=None,
                   drop_condition=None, snr_gamma: float | None = None, generator=None) -> torch.Tensor:
    """DDPM training loss of clean diffusion latents (B, latent_dim): noise, predict the target, MSE.

    With ``snr_gamma`` each sample's error is weighted by min(SNR, gamma) / SNR for epsilon, by
    min(SNR, gamma) / (SNR + 1) for v and min(SNR, gamma) for x0 targets: the min-SNR-gamma weight of the
    x0 error (Hang et al. 2023, eq. 8) expressed for each target.
    """
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator, device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)  # sqrt(a_t) z0 + sqrt(1 - a_t) eps
    pred = denoiser(noisy, timesteps, class_labels=class_labels, drop_condition=drop_condition,
                    return_dict=False)[0].float()

    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = latents
    if snr_gamma is None:
        return torch.nn.functional.mse_loss(pred, target)
    snr = compute_snr(scheduler, timesteps)  # (B,)
    weight = snr.clamp(max=snr_gamma)
    if prediction_type == "epsilon":
        weight = weight / snr
    elif prediction_type == "v_prediction":
        weight = weight / (snr + 1)
    return ((pred - target).pow(2).mean(dim=1) * weight).mean()


@torch.no_grad()
def validation_loss(denoiser, scheduler, mean, std, labels, scaling_factor: float, batch_size: int, seed: int) -> float:
    """Unweighted diffusion loss on the validation latents with fixed noise (comparable across steps).

    A private generator keeps the global RNG, and with it the training run, untouched.
    """
    generator = torch.Generator(device=mean.device).manual_seed(seed)
    denoiser.eval()
    total = 0.0
    for start in range(0, len(mean), batch_size):
        part = slice(start, start + batch_size)
        eps = torch.randn(mean[part].shape, generator=generator, device=mean.device)
        latents = (mean[part] + std[part] * eps) * scaling_factor
        class_labels = None if labels is None else labels[part]
        total += diffusion_loss(denoiser, scheduler, latents, class_labels, generator=generator).item() * len(latents)
    denoiser.train()
    return total / len(mean)


def save_pipeline(pipe: FMRILatentDiffusionPipeline, output_dir: Path) -> None:
    """``save_pretrained`` into ``output_dir`` so that a folder with ``model_index.json`` is always complete.

    The pipeline is written to ``pipeline.tmp``; ``model_index.json`` is removed, the component folders
    are swapped in one by one, and ``model_index.json`` comes last.
    """
    tmp = output_dir / "pipeline.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp)
    (output_dir / "model_index.json").unlink(missing_ok=True)
    for part in tmp.iterdir():
        if part.name != "model_index.json":
            replace_dir(part, output_dir / part.name)
    os.replace(tmp / "model_index.json", output_dir / "model_index.json")
    tmp.rmdir()


def main(args: argparse.Namespace) -> dict:
    """Train as ``args`` say; return a summary dict (``output_dir``, ``global_step``, metrics, throughput)."""
    setup_console_logging()
    check_positive(args, ["train_batch_size", "eval_batch_size", "gradient_accumulation_steps", "num_epochs",
                          "max_train_steps", "checkpointing_steps", "validation_steps", "checkpoints_total_limit",
                          "ddpm_num_steps", "layers_per_block", "time_embed_dim"])
    if not 0.0 <= args.condition_dropout < 1.0:
        raise ValueError(f"--condition_dropout must be in [0, 1), got {args.condition_dropout}")
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        raise ValueError(f"--snr_gamma must be > 0, got {args.snr_gamma}")
    out = Path(args.output_dir)

    # 1. Accelerator, resume point, output folder, VAE and data: every check before anything is written.
    accelerator = build_accelerator(args)
    checkpoint = find_checkpoint(out, args.resume_from_checkpoint)
    if args.resume_from_checkpoint == "latest" and checkpoint is None:
        logger.info(f"--resume_from_checkpoint latest: no checkpoint in {out}, starting a new run")
    check_output_dir(args, resuming=checkpoint is not None)
    world, rank = accelerator.num_processes, accelerator.process_index

    vae, vae_folder = load_vae(args.pretrained_vae_model_name_or_path)
    # Without --data_path, the VAE run's data settings (flags given here still win); with it, the defaults.
    vae_data_config = vae_folder / DATA_CONFIG
    inherit = args.data_path is None and vae_data_config.is_file()
    resolve_data_args(args, json.loads(vae_data_config.read_text()) if inherit else None)
    fmri, splits = load_data(args, world)
    if vae.config.n_voxels != fmri.n_voxels:
        raise ValueError(f"The VAE in {args.pretrained_vae_model_name_or_path} was trained on {vae.config.n_voxels} "
                         f"voxels, but the data {args.data_path} have {fmri.n_voxels}")
    train_idx, val_idx = splits["train"], splits["val"]
    classes, codes = None, None
    if args.conditioning != "none":
        values = fmri.labels if args.conditioning == "label" else fmri.subjects
        if values is None:
            raise ValueError("--conditioning label needs labels: pass --label_key (npz/mat/Arrow data)")
        classes, codes = np.unique(values, return_inverse=True)  # denoiser class i = classes[i]
        codes = torch.as_tensor(codes, dtype=torch.long, device=accelerator.device)
    scaling_factor = vae.config.scaling_factor
    if scaling_factor == 1.0:
        logger.warning("The VAE's scaling_factor is 1.0: was it set by train_vae.py? Latents may not have unit variance")

    # 2. Encode the train and val splits once: posterior mean and std, (n, latent_dim) each.
    vae.to(accelerator.device)
    train_mean, train_std = encode_posteriors(vae, fmri.data, train_idx, args.eval_batch_size, accelerator.device)
    val_mean, val_std = encode_posteriors(vae, fmri.data, val_idx, args.eval_batch_size, accelerator.device)

    # 3. Denoiser, noise scheduler, optimizer, LR schedule (x world: the prepared scheduler steps per process).
    set_seed(args.seed, device_specific=True)  # each rank its own noise and timesteps
    denoiser = FMRIDenoiser(latent_dim=vae.config.latent_dim, hidden_dims=args.denoiser_hidden_dims,
                            layers_per_block=args.layers_per_block, time_embed_dim=args.time_embed_dim,
                            dropout=args.denoiser_dropout,
                            num_class_embeds=None if classes is None else len(classes))
    # timestep_spacing only matters at sampling (it is saved with the pipeline): "trailing" starts every
    # sampler at the last training step, t = T - 1. The default "leading" starts 10-step solvers at
    # t = 900, from noise that is not yet pure (Lin et al. 2024; benchmarks/bench_sampling.py).
    noise_scheduler = DDPMScheduler(num_train_timesteps=args.ddpm_num_steps, beta_schedule=args.ddpm_beta_schedule,
                                    prediction_type=args.prediction_type, clip_sample=False,
                                    timestep_spacing="trailing")
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    max_steps = total_train_steps(args, len(train_idx), world)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * world,
                                 num_training_steps=max_steps * world)
    model, optimizer, lr_scheduler = accelerator.prepare(denoiser, optimizer, lr_scheduler)
    denoiser = accelerator.unwrap_model(model)
    ema = None
    if args.use_ema:
        # min_decay must be a float (0 breaks load_state_dict); the EMA is checkpointed with the run.
        ema = EMAModel(denoiser.parameters(), decay=args.ema_decay, min_decay=0.0, use_ema_warmup=True,
                       inv_gamma=args.ema_inv_gamma, power=args.ema_power)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    # 4. Output folder, data record, trackers; then restore the checkpoint.
    prepare_output_dir(args, accelerator, resuming=checkpoint is not None)
    if accelerator.is_main_process:
        save_data_config(out, args, fmri, splits, extra={
            "conditioning": args.conditioning,
            "classes": None if classes is None else classes.tolist(),
            "vae": str(args.pretrained_vae_model_name_or_path),
        })
    accelerator.init_trackers("train_ldm", config=tracker_config(args))
    global_step = 0
    if checkpoint is not None:
        global_step = load_checkpoint(accelerator, checkpoint)["global_step"]
        if ema is not None:
            ema.to(accelerator.device)  # custom states are loaded onto the CPU
        logger.info(f"Resumed from {checkpoint} at step {global_step}")
    metric_log = MetricLog(accelerator, out / TRAIN_LOG, resume_step=global_step if checkpoint else None)

    acc = args.gradient_accumulation_steps
    micro_per_epoch = steps_per_epoch(len(train_idx), args.train_batch_size, world)
    logger.info("***** Running training *****")
    logger.info(f"  Num examples (train / val / test) = {len(train_idx)} / {len(val_idx)} / {len(splits['test'])}")
    logger.info(f"  VAE = {args.pretrained_vae_model_name_or_path}, latent_dim = {vae.config.latent_dim}, "
                f"scaling_factor = {scaling_factor:.4g}, conditioning = {args.conditioning}")
    logger.info(f"  Num processes = {world}, device = {accelerator.device}, mixed_precision = {args.mixed_precision}")
    logger.info(f"  Batch size per device = {args.train_batch_size}, gradient accumulation steps = {acc}, "
                f"total batch size = {args.train_batch_size * world * acc}")
    logger.info(f"  Num epochs = {args.num_epochs}, total optimization steps = {max_steps}")

    def validate() -> float:
        """Validation loss on the EMA weights when EMA is on (those are the weights that get saved)."""
        if ema is not None:
            ema.store(denoiser.parameters())
            ema.copy_to(denoiser.parameters())
        val_labels = None if codes is None else codes[val_idx]
        loss = validation_loss(denoiser, noise_scheduler, val_mean, val_std, val_labels, scaling_factor,
                               args.eval_batch_size, args.seed)
        if ema is not None:
            ema.restore(denoiser.parameters())
        return loss

    # 5. Train from the in-memory latents; the position in the data follows from the step.
    first_epoch, skip = divmod(global_step * acc, micro_per_epoch)
    train_codes = None if codes is None else codes[train_idx]
    progress = tqdm(total=max_steps, initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process)
    running = torch.zeros((), device=accelerator.device)  # loss summed over the accumulation window
    val_loss, train_seconds, timed_steps = None, 0.0, 0
    timer = time.perf_counter()
    for epoch in range(first_epoch, args.num_epochs):
        if global_step >= max_steps:
            break
        batches = epoch_batches(len(train_idx), args.train_batch_size, epoch, args.seed, rank, world)[skip:]
        skip = 0
        for positions in batches:
            idx = torch.as_tensor(positions, device=accelerator.device)
            mean, std = train_mean[idx], train_std[idx]  # (B, latent_dim)
            latents = (mean + std * torch.randn_like(mean)) * scaling_factor  # z ~ q(z|x), unit variance
            class_labels = drop = None
            if train_codes is not None:
                class_labels = train_codes[idx]
                drop = torch.rand(len(idx), device=accelerator.device) < args.condition_dropout
            with accelerator.accumulate(model):
                loss = diffusion_loss(model, noise_scheduler, latents, class_labels, drop, args.snr_gamma)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            running += loss.detach() / acc
            if not accelerator.sync_gradients:
                continue

            # One optimizer step done: EMA, log the window's mean over ranks, validate, checkpoint.
            if ema is not None:
                ema.step(denoiser.parameters())
            global_step += 1
            timed_steps += 1
            train_seconds += time.perf_counter() - timer
            mean_loss = accelerator.gather(running[None]).mean().item()
            running.zero_()
            logs = {"train/loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0]}
            if ema is not None:
                logs["ema_decay"] = ema.cur_decay_value
            metric_log.log(logs, step=global_step)
            progress.update(1)
            progress.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{logs['lr']:.2e}", refresh=False)

            if len(val_idx) and (global_step % args.validation_steps == 0 or global_step == max_steps):
                if accelerator.is_main_process:
                    val_loss = validate()
                    metric_log.log({"val/loss": val_loss}, step=global_step)
                    logger.info(f"step {global_step}: val/loss {val_loss:.4g}")
                accelerator.wait_for_everyone()
            if global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, out, global_step, args.checkpoints_total_limit, {})
            timer = time.perf_counter()
            if global_step >= max_steps:
                break
    progress.close()

    # 6. Save the pipeline (EMA weights when used) with a DDPM sampling scheduler.
    accelerator.wait_for_everyone()
    summary = {"output_dir": str(out), "global_step": global_step, "world_size": world, "val_loss": val_loss}
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(denoiser.parameters())
        pipe = FMRILatentDiffusionPipeline(vae=vae, denoiser=denoiser, scheduler=noise_scheduler)
        save_pipeline(pipe, out)
        summary["train_samples_per_second"] = (timed_steps * args.train_batch_size * world * acc
                                               / max(train_seconds, 1e-9))
        (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        logger.info(f"Saved the pipeline to {out}")
        if args.push_to_hub:
            repo_id = args.hub_model_id or out.resolve().name
            create_model_card(out, repo_id=repo_id, metrics=None if val_loss is None else {"val_loss": val_loss},
                              training_data=f"{fmri.source}: {len(train_idx)} training samples x {fmri.n_voxels} "
                                            f"voxels ({args.split} split).")
            push_folder_to_hub(out, repo_id, token=args.hub_token, private=args.hub_private_repo)
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    main(parse_args())
