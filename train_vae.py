#!/usr/bin/env python
"""Train an :class:`~fmri_diffusers.FMRIVAE` on fMRI patterns (n_samples, n_voxels).

    accelerate launch train_vae.py --data_path data/sub-01.npz --output_dir outputs/vae
    python train_vae.py --config configs/vae_tiny.yaml --learning_rate 3e-4   # the command line wins

Loss (model space: voxels z-scored with the train split's statistics by ``vae.normalize``)::

    loss = recon_mse + beta * KL / n_kept

``recon_mse`` is the squared error averaged over the kept voxels and the batch; ``KL`` is
KL(q(z|x) || N(0, I)) summed over latent dimensions and averaged over the batch. Dividing it by the
number of kept voxels puts both terms on a per-voxel scale, so ``--kl_weight`` (beta) means the same
for 1,000 or 100,000 voxels; beta = 2 is the ELBO of a decoder with unit variance (times 2 / n_kept).
beta ramps up linearly over ``--kl_warmup_steps`` optimizer steps.

Output folder (``--output_dir``)::

    vae/               the VAE to use: lowest validation loss (the last one when there is no validation
                       split), with scaling_factor set; ``train_ldm.py --pretrained_vae_model_name_or_path
                       <output_dir>`` loads this
    vae_final/         the VAE after the last step, with its own scaling_factor
    data_config.json   the data / split flags, split sizes (+ splits.npz: the indices; space/: image space)
    train_log.jsonl    {"step", "name", "value"} per line: train/loss, train/recon_mse, train/kl, lr, val/...
    metrics.json       best step, best and final validation metrics, scaling factor, throughput
    checkpoint-<step>/ accelerate training state for --resume_from_checkpoint
    logs/              train.log and the tracker's files

``scaling_factor`` is 1 / std of posterior *samples* z = mu + sigma * eps over the training split (all
latent dimensions pooled), computed in closed form, Var z = Var(mu) + E[sigma^2], so that the
diffusion latents ``z * scaling_factor`` that train_ldm.py draws have unit variance.

``noise_std`` (a buffer of the VAE) is the per-voxel RMS residual of posterior-mean reconstructions on
the validation split: the std of p(x | z) = N(decode(z), noise_std^2). The pipeline samples from it,
so generated patterns carry the noise real scans carry rather than only the smooth decoder mean.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fmri_diffusers.config import parse_args_with_config
from fmri_diffusers.data import VectorDataset, compute_voxel_stats
from fmri_diffusers.models.fmri_vae import FMRIVAE
from fmri_diffusers.training import (
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
    resolve_data_args,
    save_checkpoint,
    save_data_config,
    save_pretrained_atomically,
    setup_console_logging,
    steps_per_epoch,
    total_train_steps,
    tracker_config,
)

logger = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The script's flags (main.py maps its YAML sections onto them)."""
    parser = argparse.ArgumentParser(description="Train an fMRI VAE.", allow_abbrev=False)
    add_run_args(parser, default_output_dir="outputs/vae")
    add_data_args(parser)
    g = parser.add_argument_group("VAE")
    g.add_argument("--latent_dim", type=int, default=64, help="Size of the VAE latent vector.")
    g.add_argument("--hidden_dims", type=int, nargs="+", default=[512, 256], help="Encoder widths.")
    g.add_argument("--norm", type=str, default="layer", choices=["batch", "layer", "none"],
                   help="Normalisation after each hidden Linear layer.")
    g.add_argument("--dropout", type=float, default=0.1, help="Dropout after each hidden layer of the VAE.")
    g.add_argument("--kl_weight", type=float, default=1.0, help="beta, on KL / n_kept_voxels (see the docstring).")
    g.add_argument("--kl_warmup_steps", type=int, default=0, help="Linear ramp of beta from 0 (0 = none).")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags from ``argv`` (default ``sys.argv[1:]``), with ``--config run.yaml`` supplying unset ones."""
    return parse_args_with_config(build_parser(), argv)


def vae_loss(model, x: torch.Tensor, kl_weight: float, mask: torch.Tensor):
    """The training loss of a batch ``x`` (B, n_voxels) in model space; returns (loss, recon_mse, kl).

    ``mask`` (n_voxels,) is 1 for kept voxels: masked-out voxels are 0 in model space and refilled by
    ``denormalize``, so they are left out of the error.
    """
    # return_dict=False: accelerate's fp32 output conversion (mixed precision) cannot rebuild FMRIVAEOutput.
    sample, posterior = model(x, return_dict=False)  # samples z ~ q(z|x) (reparameterised)
    n_kept = mask.sum()
    recon = ((sample.float() - x).pow(2) * mask).sum(dim=1).mean() / n_kept
    kl = posterior.kl().float().mean()  # (B,) -> scalar
    return recon + kl_weight * kl / n_kept, recon, kl


@torch.no_grad()
def evaluate(vae: FMRIVAE, loader: DataLoader, kl_weight: float, device) -> dict:
    """Validation metrics with posterior means (no randomness): loss, recon MSE, KL, mean sample-wise Pearson r.

    Pearson r is computed per sample across the kept voxels, in model space (z-scored voxels, so the
    shared mean pattern does not inflate it), and averaged over samples.
    """
    vae.eval()
    kept = vae.voxel_stats.mask > 0
    sums = {"recon_mse": 0.0, "kl": 0.0, "pearson_r": 0.0}
    n = 0
    for batch in loader:
        x = vae.normalize(batch.to(device))  # (B, n_voxels)
        sample, posterior = vae(x, sample_posterior=False, return_dict=False)
        rec = sample.float()[:, kept]
        target = x[:, kept]
        sums["recon_mse"] += (rec - target).pow(2).mean(dim=1).sum().item()
        sums["kl"] += posterior.kl().float().sum().item()
        rc, tc = rec - rec.mean(dim=1, keepdim=True), target - target.mean(dim=1, keepdim=True)
        r = (rc * tc).sum(dim=1) / (rc.norm(dim=1) * tc.norm(dim=1)).clamp_min(1e-12)
        sums["pearson_r"] += r.sum().item()
        n += len(x)
    vae.train()
    metrics = {f"val/{k}": v / n for k, v in sums.items()}
    metrics["val/loss"] = metrics["val/recon_mse"] + kl_weight * metrics["val/kl"] / kept.sum().item()
    return metrics


@torch.no_grad()
def latent_scaling_factor(vae: FMRIVAE, loader: DataLoader, device) -> float:
    """1 / std of posterior samples over ``loader``'s data: Var z = Var(mu) + E[sigma^2], dims pooled."""
    vae.eval()
    s_mu = s_mu2 = s_var = 0.0
    count = 0
    for batch in loader:
        posterior = vae.encode(vae.normalize(batch.to(device))).latent_dist
        mu, var = posterior.mean.double(), posterior.var.double()  # (B, latent_dim)
        s_mu, s_mu2, s_var = s_mu + mu.sum().item(), s_mu2 + mu.pow(2).sum().item(), s_var + var.sum().item()
        count += mu.numel()
    vae.train()
    mean = s_mu / count
    return 1.0 / math.sqrt(s_mu2 / count - mean**2 + s_var / count)


@torch.no_grad()
def residual_noise_std(vae: FMRIVAE, loader: DataLoader, device) -> torch.Tensor:
    """Per-voxel RMS residual of posterior-mean reconstructions over ``loader``'s data, in model space (n_voxels,).

    This is the maximum-likelihood std of a Gaussian p(x | z) = N(decode(z), diag(s^2)) around the trained
    decoder; measured on the validation split, it is not shrunk by overfitting to the training samples.
    """
    vae.eval()
    total, count = 0.0, 0
    for batch in loader:
        x = vae.normalize(batch.to(device))
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
        total = total + (recon.double() - x.double()).pow(2).sum(dim=0)
        count += x.shape[0]
    vae.train()
    return (total / count).sqrt().float()


def save_vae(vae: FMRIVAE, path: Path, train_loader: DataLoader, noise_loader: DataLoader, device) -> float:
    """Set ``scaling_factor`` (training latents) and ``noise_std`` (``noise_loader``), save atomically; return the factor."""
    scaling_factor = latent_scaling_factor(vae, train_loader, device)
    vae.register_to_config(scaling_factor=scaling_factor)
    vae.set_noise_std(residual_noise_std(vae, noise_loader, device))
    save_pretrained_atomically(vae, path)
    return scaling_factor


def main(args: argparse.Namespace) -> dict:
    """Train as ``args`` say; return a summary dict (``output_dir``, ``global_step``, metrics, throughput)."""
    setup_console_logging()
    check_positive(args, ["train_batch_size", "eval_batch_size", "gradient_accumulation_steps", "num_epochs",
                          "max_train_steps", "checkpointing_steps", "validation_steps", "checkpoints_total_limit",
                          "latent_dim"])
    if args.kl_weight < 0 or args.kl_warmup_steps < 0:
        raise ValueError(f"--kl_weight and --kl_warmup_steps must be >= 0, got {args.kl_weight}, {args.kl_warmup_steps}")
    resolve_data_args(args)
    out = Path(args.output_dir)

    # 1. Accelerator, resume point and output folder: every check runs before anything is written.
    accelerator = build_accelerator(args)
    checkpoint = find_checkpoint(out, args.resume_from_checkpoint)
    if args.resume_from_checkpoint == "latest" and checkpoint is None:
        logger.info(f"--resume_from_checkpoint latest: no checkpoint in {out}, starting a new run")
    check_output_dir(args, resuming=checkpoint is not None)
    world, rank = accelerator.num_processes, accelerator.process_index

    # 2. Data: split, then voxel statistics from the training split only (no leak into val / test).
    fmri, splits = load_data(args, world)
    train_idx, val_idx = splits["train"], splits["val"]
    stats = compute_voxel_stats(fmri.data, train_idx, nonfinite=args.nonfinite)
    train_set = VectorDataset(fmri.data, train_idx)

    # Every DataLoader gets its own generator: starting to iterate one otherwise draws a seed from the global
    # RNG, and a resumed run must draw from it exactly as the uninterrupted run did (validation included).
    def eval_loader(indices):  # in order, for validation and the scaling factor
        return DataLoader(VectorDataset(fmri.data, indices), batch_size=args.eval_batch_size,
                          collate_fn=VectorDataset.collate, generator=torch.Generator())

    # 3. Model, optimizer, LR schedule. The prepared scheduler steps once per process per optimizer
    #    step, hence the factors `world` (as in diffusers' examples).
    set_seed(args.seed, device_specific=True)  # each rank its own dropout / posterior noise
    vae = FMRIVAE(n_voxels=fmri.n_voxels, latent_dim=args.latent_dim, hidden_dims=args.hidden_dims,
                  norm=args.norm, dropout=args.dropout)
    vae.set_voxel_statistics(stats.mean, stats.std, stats.mask)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    max_steps = total_train_steps(args, len(train_idx), world)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * world,
                                 num_training_steps=max_steps * world)
    model, optimizer, lr_scheduler = accelerator.prepare(vae, optimizer, lr_scheduler)
    vae = accelerator.unwrap_model(model)
    mask = vae.voxel_stats.mask  # (n_voxels,) on the device

    # 4. Output folder, data record, trackers; then restore the checkpoint.
    prepare_output_dir(args, accelerator, resuming=checkpoint is not None)
    if accelerator.is_main_process:
        save_data_config(out, args, fmri, splits)
    accelerator.init_trackers("train_vae", config=tracker_config(args))
    global_step, best = 0, {"best_val_loss": math.inf, "best_step": None}
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint)
        global_step = state["global_step"]
        best = {k: state.get(k, v) for k, v in best.items()}
        logger.info(f"Resumed from {checkpoint} at step {global_step}")
    metric_log = MetricLog(accelerator, out / TRAIN_LOG, resume_step=global_step if checkpoint else None)

    acc = args.gradient_accumulation_steps
    micro_per_epoch = steps_per_epoch(len(train_idx), args.train_batch_size, world)
    logger.info("***** Running training *****")
    logger.info(f"  Num examples (train / val / test) = {len(train_idx)} / {len(val_idx)} / {len(splits['test'])}")
    logger.info(f"  Num voxels = {fmri.n_voxels} ({stats.n_kept} kept), latent_dim = {args.latent_dim}")
    logger.info(f"  Num processes = {world}, device = {accelerator.device}, mixed_precision = {args.mixed_precision}")
    logger.info(f"  Batch size per device = {args.train_batch_size}, gradient accumulation steps = {acc}, "
                f"total batch size = {args.train_batch_size * world * acc}")
    logger.info(f"  Num epochs = {args.num_epochs}, total optimization steps = {max_steps}")

    # 5. Train. The position in the data follows from the step: micro-batch number global_step * acc.
    first_epoch, skip = divmod(global_step * acc, micro_per_epoch)
    progress = tqdm(total=max_steps, initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process)
    running = torch.zeros(3, device=accelerator.device)  # loss, recon, kl summed over the accumulation window
    final_val, train_seconds, timed_steps = {}, 0.0, 0
    timer = time.perf_counter()
    for epoch in range(first_epoch, args.num_epochs):
        if global_step >= max_steps:
            break
        batches = epoch_batches(len(train_idx), args.train_batch_size, epoch, args.seed, rank, world)[skip:]
        skip = 0
        loader = DataLoader(train_set, batch_sampler=batches, collate_fn=VectorDataset.collate,
                            num_workers=args.dataloader_num_workers,
                            generator=torch.Generator().manual_seed(args.seed + epoch))
        for batch in loader:
            x = vae.normalize(batch.to(accelerator.device))  # (B, n_voxels), model space
            ramp = min(1.0, (global_step + 1) / args.kl_warmup_steps) if args.kl_warmup_steps else 1.0
            with accelerator.accumulate(model):
                loss, recon, kl = vae_loss(model, x, args.kl_weight * ramp, mask)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            running += torch.stack([loss, recon, kl]).detach() / acc
            if not accelerator.sync_gradients:
                continue

            # One optimizer step done: log the window's mean over ranks, validate, checkpoint.
            global_step += 1
            timed_steps += 1
            train_seconds += time.perf_counter() - timer
            mean = accelerator.gather(running[None]).mean(dim=0).tolist()
            running.zero_()
            logs = {"train/loss": mean[0], "train/recon_mse": mean[1], "train/kl": mean[2],
                    "lr": lr_scheduler.get_last_lr()[0]}
            metric_log.log(logs, step=global_step)
            progress.update(1)
            progress.set_postfix(loss=f"{mean[0]:.4g}", lr=f"{logs['lr']:.2e}", refresh=False)

            if len(val_idx) and (global_step % args.validation_steps == 0 or global_step == max_steps):
                if accelerator.is_main_process:
                    final_val = evaluate(vae, eval_loader(val_idx), args.kl_weight, accelerator.device)
                    metric_log.log(final_val, step=global_step)
                    logger.info(f"step {global_step}: " + ", ".join(f"{k} {v:.4g}" for k, v in final_val.items()))
                    if final_val["val/loss"] < best["best_val_loss"]:
                        best = {"best_val_loss": final_val["val/loss"], "best_step": global_step}
                        save_vae(vae, out / "vae", eval_loader(train_idx), eval_loader(val_idx), accelerator.device)
                accelerator.wait_for_everyone()
            if global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, out, global_step, args.checkpoints_total_limit, best)
            timer = time.perf_counter()
            if global_step >= max_steps:
                break
    progress.close()

    # 6. Final model; without a validation split the final model is also the one to use.
    accelerator.wait_for_everyone()
    summary = {"output_dir": str(out), "global_step": global_step, "world_size": world}
    if accelerator.is_main_process:
        # Observation noise is measured on the validation split; without one, on the (optimistic) training split.
        noise_idx = val_idx if len(val_idx) else train_idx
        summary["scaling_factor"] = save_vae(vae, out / "vae_final", eval_loader(train_idx), eval_loader(noise_idx),
                                             accelerator.device)
        if not len(val_idx):
            save_vae(vae, out / "vae", eval_loader(train_idx), eval_loader(train_idx), accelerator.device)
        summary.update(best, final_val=final_val,
                       train_samples_per_second=timed_steps * args.train_batch_size * world * acc
                       / max(train_seconds, 1e-9))
        (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        logger.info(f"Saved the VAE to {out / 'vae'} (best step {best['best_step']}) and {out / 'vae_final'}")
        if args.push_to_hub:
            repo_id = args.hub_model_id or out.resolve().name
            FMRIVAE.from_pretrained(out / "vae").push_to_hub(repo_id, token=args.hub_token,
                                                              private=args.hub_private_repo)
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    main(parse_args())
